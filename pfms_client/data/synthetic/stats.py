"""Numbers both synthetic generators share: random streams, label calibration, oracle AUC.

``scenario_key`` seeds a scenario's own random stream from its name;
``calibrate`` finds the logit bias that hits a target rate and ``sigmoid`` turns
logits into probabilities; ``oracle_auc`` is the AUC of those true
probabilities on the generated labels (recorded in each scenario's meta: the
ceiling any model can reach), and ``StreamingAUC`` the same fed block by block
with bounded memory (exact up to a row limit, a fine histogram beyond).
"""

from __future__ import annotations

import zlib

import numpy as np

_BISECT_STEPS = 60
_BISECT_BOUND = 30.0
# Oracle AUCs in a generated data set's meta: exact up to this many rows (9 bytes a
# row kept), a histogram of this many logit bins beyond (16 MiB; error <~ 1e-5).
AUC_EXACT_ROWS = 1_000_000
AUC_BINS = 2**20


def scenario_key(scenario: str) -> int:
    """Stable 32-bit key of a scenario name (Python's hash() is salted per process)."""
    return zlib.crc32(scenario.encode("utf-8"))


def calibrate(logit: np.ndarray, target: float, weight: np.ndarray | None = None) -> float:
    """Bias b with mean(weight * sigmoid(logit + b)) == target (bisection; monotone in b)."""
    w = np.ones_like(logit) if weight is None else weight
    lo, hi = -_BISECT_BOUND, _BISECT_BOUND
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if np.mean(w * sigmoid(logit + mid)) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def oracle_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Rank AUC of the true probabilities: the ceiling any model can reach on this split."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(score)
    auc = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return round(float(auc), 4)


def average_ranks(score: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as scipy's rankdata, without importing scipy)."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    return (first_rank + (counts - 1) / 2.0)[inverse]


class StreamingAUC:
    """Rank AUC of scores in (0, 1) against 0/1 labels, fed block by block in bounded memory.

    While at most ``exact_rows`` rows have been added it keeps them and ``value()``
    is exactly ``oracle_auc`` of all of them (ties share their mean rank). Past
    that, it folds everything into a histogram of logit(score) over
    ``[-LOGIT_BOUND, LOGIT_BOUND]`` (``bins`` equal bins; scores beyond fall into
    the end bins): pairs in different bins are ordered exactly (logit is
    monotone), a positive and a negative in the same bin count one half, so the
    error is at most ``error_bound()`` = half the share of (positive, negative)
    pairs that share a bin (about 1e-5 for the generators' scores with 2^20 bins).
    Memory: at most ``exact_rows`` x 9 bytes, or 2 x ``bins`` x 8 bytes.
    """

    LOGIT_BOUND = 20.0

    def __init__(self, exact_rows: int, bins: int) -> None:
        self.exact_rows = exact_rows
        self.bins = bins
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._rows = 0
        self._hist: np.ndarray | None = None  # [2, bins]: negatives, positives

    def add(self, y: np.ndarray, score: np.ndarray) -> None:
        self._rows += len(y)
        if self._hist is None and self._rows <= self.exact_rows:
            self._labels.append(np.asarray(y) == 1)
            self._scores.append(np.asarray(score, dtype=np.float64).copy())
            return
        if self._hist is None:
            self._hist = np.zeros((2, self.bins), dtype=np.int64)
            for kept_y, kept_s in zip(self._labels, self._scores, strict=True):
                self._fold(kept_y, kept_s)
            self._labels, self._scores = [], []
        self._fold(np.asarray(y) == 1, np.asarray(score, dtype=np.float64))

    def _fold(self, pos: np.ndarray, score: np.ndarray) -> None:
        assert self._hist is not None
        with np.errstate(divide="ignore"):
            logit = np.log(score) - np.log1p(-score)
        edge = self.LOGIT_BOUND
        b = ((np.clip(logit, -edge, edge) + edge) * (self.bins / (2 * edge))).astype(np.int64)
        np.minimum(b, self.bins - 1, out=b)
        self._hist[0] += np.bincount(b[~pos], minlength=self.bins)
        self._hist[1] += np.bincount(b[pos], minlength=self.bins)

    @property
    def exact(self) -> bool:
        return self._hist is None

    def value(self) -> float | None:
        """The AUC rounded to 4 decimals (as ``oracle_auc``); None without both classes."""
        if self._hist is None:
            if not self._labels:
                return None
            return oracle_auc(np.concatenate(self._labels), np.concatenate(self._scores))
        neg, pos = self._hist[0].astype(np.float64), self._hist[1].astype(np.float64)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return None
        below = np.cumsum(neg) - neg  # negatives in lower bins
        auc = float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))
        return round(auc, 4)

    def error_bound(self) -> float:
        """Largest possible |value() - exact AUC| before rounding (0 while exact)."""
        if self._hist is None:
            return 0.0
        neg, pos = self._hist[0].astype(np.float64), self._hist[1].astype(np.float64)
        pairs = pos.sum() * neg.sum()
        return float(0.5 * (pos * neg).sum() / pairs) if pairs else 0.0
