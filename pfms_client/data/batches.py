"""Batches for training and evaluation, from in-memory tensors or the mapped store alike.

Training order: each epoch is one ``torch.randperm(n)`` from the round's seeded
generator, cut into batches of ``batch_size`` rows (a last batch of one row is
skipped: BatchNorm needs two). That is the order the in-memory trainer always used,
so a scenario read into memory and the same scenario streamed from its store see
the same batches and train to the same numbers. A full permutation rather than a
block shuffle: it costs 8 bytes per row (80 MB at 10M rows) and gathering 512
random rows from a mapped store in the page cache costs well under a millisecond,
a few per cent of a training step (benchmarks/bench_data.py measures it), while a
block shuffle would change the batches and correlate rows within a batch.

``local_steps`` (train.local_steps) replaces whole epochs by exactly that many
batches per round, taken from the same seeded permutations (a new one starts
when one is used up).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .tensors import TensorSplit

MIN_BATCH_ROWS = 2  # BatchNorm in train mode needs two rows


def batch_indices(n: int, batch_size: int, gen: torch.Generator, *, epochs: int = 1,
                  steps: int | None = None) -> Iterator[torch.Tensor]:
    """Row indices of each training batch: ``epochs`` whole epochs, or ``steps`` batches."""
    if n < MIN_BATCH_ROWS:
        return
    done, epoch = 0, 0
    while (steps is None and epoch < epochs) or (steps is not None and done < steps):
        perm = torch.randperm(n, generator=gen)
        epoch += 1
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() < MIN_BATCH_ROWS:
                continue
            yield idx
            done += 1
            if steps is not None and done >= steps:
                return


@dataclass(frozen=True)
class StoreSplit:
    """One split of a prepared store, memory-mapped: rows are read per batch.

    The arrays hold every row of a source file; ``index`` (sorted row numbers, mapped
    too) picks the split's rows from them, or is None when the split is the whole file.
    Row ``i`` of the split is row ``index[i]`` of the arrays.
    """

    x_cat: np.ndarray  # int32 [N, F], 0 = out-of-vocabulary
    x_num: np.ndarray  # float32 [N, Dn]
    y: np.ndarray  # uint8 [N, T]
    index: np.ndarray | None = None  # int64 [n], sorted; None = all N rows
    rates: dict[str, float] | None = None  # positive rate per task, from the manifest

    def __len__(self) -> int:
        return int(self.index.shape[0] if self.index is not None else self.y.shape[0])

    @property
    def num_tasks(self) -> int:
        return int(self.y.shape[1])

    def take(self, i: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x_cat, x_num, y) of the split's rows ``i``: new arrays in the stored dtypes."""
        if self.index is not None:
            i = np.asarray(self.index[i])
        return np.array(self.x_cat[i]), np.array(self.x_num[i]), np.array(self.y[i])

    def _tensors(self, i: np.ndarray | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_cat, x_num, y = self.take(i)
        return (torch.from_numpy(x_cat.astype(np.int64)), torch.from_numpy(x_num),
                torch.from_numpy(y.astype(np.float32)))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_cat int64, x_num float32, y float32) of the rows ``idx``."""
        return self._tensors(idx.numpy())

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._tensors(slice(start, stop))

    def labels(self) -> np.ndarray:
        """[n, T] float32 labels (1 byte per row and task read from the store)."""
        y = self.y if self.index is None else self.y[np.asarray(self.index)]
        return np.asarray(y, dtype=np.float32)

    def positive_rates(self) -> list[float]:
        if self.rates is not None:
            return [float(r) for r in self.rates.values()]
        return [float(r) for r in self.labels().astype(np.float64).mean(axis=0)] if len(self) else []

    def in_memory(self) -> TensorSplit:
        """The whole split as contiguous tensors (the types load_scenario always returned)."""
        return TensorSplit(*self._tensors(slice(None)))
