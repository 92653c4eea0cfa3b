"""Numbers both synthetic generators share: random streams, label calibration, oracle AUC.

``scenario_key`` seeds a scenario's own random stream from its name;
``calibrate`` finds the logit bias that hits a target rate and ``sigmoid`` turns
logits into probabilities; ``oracle_auc`` is the AUC of those true
probabilities on the generated labels (recorded in each scenario's meta: the
ceiling any model can reach).
"""

from __future__ import annotations

import zlib

import numpy as np

_BISECT_STEPS = 60
_BISECT_BOUND = 30.0


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
