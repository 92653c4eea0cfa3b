"""Per-scenario encoders fitted on the train part only (never on val/test rows).

Id spaces are local to a scenario, so every scenario re-indexes its own ids;
index 0 is the out-of-vocabulary slot shared by rare ids and ids never seen in
training, which keeps embedding tables small and gives unseen ids a trained row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OOV_INDEX = 0


@dataclass(frozen=True)
class CategoricalVocab:
    """Sorted raw ids of one field that get their own index (1..V)."""

    ids: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, min_count: int) -> CategoricalVocab:
        uniq, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
        return cls(ids=uniq[counts >= min_count])

    @property
    def size(self) -> int:
        """Embedding rows needed, including the OOV slot."""
        return len(self.ids) + 1

    def transform(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(values.shape, OOV_INDEX, dtype=np.int64)
        pos = np.searchsorted(self.ids, values)
        clipped = np.minimum(pos, len(self.ids) - 1)
        known = self.ids[clipped] == values
        return np.where(known, clipped + 1, OOV_INDEX).astype(np.int64)


@dataclass(frozen=True)
class NumericScaler:
    """Per-feature affine map; identity for ``none``, z-score for ``standardize``."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, transform: str) -> NumericScaler:
        dim = x.shape[1]
        if transform == "none" or len(x) == 0:
            return cls(mean=np.zeros(dim), std=np.ones(dim))
        if transform != "standardize":
            raise ValueError(f"unknown numeric_transform {transform!r}")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        return cls(mean=mean, std=np.where(std > 0, std, 1.0))  # constant column -> just centred

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def validation_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random ``(train_idx, val_idx)``, each sorted so the file order is kept."""
    n_val = int(round(n * fraction))
    if n_val >= n:
        raise ValueError(f"val_fraction {fraction} leaves no training rows out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
