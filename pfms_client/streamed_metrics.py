"""Per-task AUC and LogLoss of rows scored in chunks: the numbers metrics.task_metrics gives
for the whole arrays, in memory that does not grow with the row count.

LogLoss is a sum. AUC needs every score's rank; rather than hold every score in memory,
each chunk's (score, label) pairs are spilled to a file on disk as one uint32 key per row
and task: the float32 score's bit pattern (monotonic for positive floats) shifted left
once, the label in the lowest bit. At the end the keys are counted per distinct score in
ascending order, in passes over the file that each hold at most ``rows_per_pass`` keys
(a first pass counts keys per 2**15-wide key range to plan them), and the Mann-Whitney
sum (ties count half) is taken in exact integers: the same AUC scikit-learn's ROC area
gives, to float rounding. Disk: 4 bytes per row and task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# What task_metrics clips to (in float64) before AUC and LogLoss: scores outside tie at the bounds.
CLIP = 1e-7
ROWS_PER_PASS = 1 << 22  # keys held at once while counting distinct scores (~16 MiB, a few times that to sort)
READ_ROWS = 1 << 20  # keys read from the spill file per step
_RANGE_BITS = 15  # the planning pass counts keys per 2**15 consecutive keys


def _float32_inside(bound: float, toward: float) -> np.float32:
    """The float32 nearest ``bound`` on the inside of the clipping interval."""
    f = np.float32(bound)
    return f if (float(f) - bound) * (toward - bound) >= 0 else np.nextafter(f, np.float32(toward))


_LOW_TIE = np.nextafter(_float32_inside(CLIP, 1.0), np.float32(0)).view(np.uint32)
_HIGH_TIE = np.nextafter(_float32_inside(1 - CLIP, 0.0), np.float32(1)).view(np.uint32)


def _rank_keys(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """uint32 keys that order scores as task_metrics' clipped float64 scores order them:
    the scores it clips tie just outside the smallest (largest) float32 it keeps."""
    p = np.asarray(p, dtype=np.float32)
    p64 = p.astype(np.float64)
    bits = p.view(np.uint32).copy()
    bits[p64 < CLIP] = _LOW_TIE
    bits[p64 > 1 - CLIP] = _HIGH_TIE
    return (bits << np.uint32(1)) | np.asarray(y, dtype=np.uint32)


class StreamedTaskMetrics:
    """``add(y, p)`` per chunk, ``result()`` once: task_metrics' dict for all rows added."""

    def __init__(self, task_names: Sequence[str], spill_dir: Path, rows_per_pass: int = ROWS_PER_PASS) -> None:
        self.task_names = list(task_names)
        self.rows_per_pass = rows_per_pass
        self.paths = [Path(spill_dir) / f"scores-{t}.u32" for t in range(len(self.task_names))]
        self.files = [p.open("wb") for p in self.paths]
        self.n = 0
        self.positives = np.zeros(len(self.task_names), dtype=np.int64)
        self.loss_sum = np.zeros(len(self.task_names), dtype=np.float64)

    def add(self, y: np.ndarray, p: np.ndarray) -> None:
        """Labels [n, T] (0/1) and probabilities float32 [n, T]."""
        y = np.asarray(y, dtype=np.uint8)
        for t, fh in enumerate(self.files):
            pt = np.clip(p[:, t].astype(np.float64), CLIP, 1 - CLIP)
            yt = y[:, t]
            self.loss_sum[t] += -np.where(yt == 1, np.log(pt), np.log(1 - pt)).sum()
            self.positives[t] += int(yt.sum())
            _rank_keys(p[:, t], yt).tofile(fh)
        self.n += len(y)

    def result(self) -> dict[str, dict[str, float]]:
        for fh in self.files:
            fh.close()
        out: dict[str, dict[str, float]] = {}
        for t, name in enumerate(self.task_names):
            pos, n = int(self.positives[t]), self.n
            auc = self._auc(self.paths[t], pos, n - pos) if 0 < pos < n else math.nan
            ll = float(self.loss_sum[t] / n) if n else math.nan
            out[name] = {"auc": auc, "logloss": ll, "n": float(n), "positives": float(pos)}
        return out

    def _keys(self, path: Path) -> Iterator[np.ndarray]:
        with path.open("rb") as fh:
            while True:
                block = np.fromfile(fh, dtype=np.uint32, count=READ_ROWS)
                if not len(block):
                    return
                yield block

    def _auc(self, path: Path, pos: int, neg: int) -> float:
        ranges = np.zeros(1 << (32 - _RANGE_BITS), dtype=np.int64)
        for block in self._keys(path):
            ranges += np.bincount(block >> _RANGE_BITS, minlength=len(ranges))
        twice = 0  # 2 x (pairs ranked right + half the tied pairs), exact
        neg_below = 0
        for first, last in _plan(ranges, self.rows_per_pass):
            lo, hi = first << _RANGE_BITS, (last + 1) << _RANGE_BITS
            if first == last:  # one range: count its keys by offset, memory bounded whatever the count
                counts = np.zeros(1 << _RANGE_BITS, dtype=np.int64)
                for block in self._keys(path):
                    sel = block[(block >= lo) & (block < hi)]
                    counts += np.bincount(sel - np.uint32(lo), minlength=len(counts))
                keys = np.flatnonzero(counts).astype(np.int64) + lo
                counts = counts[counts > 0]
            else:
                keys_in = [block[(block >= lo) & (block < hi)] for block in self._keys(path)]
                keys, counts = np.unique(np.concatenate(keys_in), return_counts=True)
                keys = keys.astype(np.int64)
            # per distinct score (key >> 1): negatives (label bit 0) and positives (1)
            score, label = keys >> 1, keys & 1
            uniq, inverse = np.unique(score, return_inverse=True)
            n_neg = np.zeros(len(uniq), dtype=np.int64)
            n_pos = np.zeros(len(uniq), dtype=np.int64)
            np.add.at(n_neg, inverse[label == 0], counts[label == 0])
            np.add.at(n_pos, inverse[label == 1], counts[label == 1])
            below = neg_below + np.concatenate(([0], np.cumsum(n_neg)[:-1]))
            twice += int((n_pos * (2 * below + n_neg)).sum())
            neg_below += int(n_neg.sum())
        return twice / (2 * pos * neg)


def _plan(ranges: np.ndarray, rows_per_pass: int) -> Iterator[tuple[int, int]]:
    """Consecutive runs (first, last) of non-empty ranges holding at most ``rows_per_pass``
    keys together; a range with more keys alone."""
    nonempty = np.flatnonzero(ranges)
    first, held = None, 0
    for r in nonempty:
        count = int(ranges[r])
        if first is not None and held + count > rows_per_pass:
            yield first, last
            first = None
        if first is None:
            first, held = int(r), 0
        held += count
        last = int(r)
    if first is not None:
        yield first, last
