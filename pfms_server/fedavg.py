"""Sample-weighted FedAvg, the aggregation rule for the global-shared experts G.

Pure numpy; the Strategy stacks one tensor over the clients that uploaded it.
"""

from __future__ import annotations

import numpy as np


def weighted_average(arrays: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over axis 0 of ``arrays`` (K, ...) with weights (K,).

    Weights are sample counts: finite, non-negative, positive total. They are
    normalised by their maximum before summing so that huge counts cannot
    overflow. Non-finite arrays are rejected rather than averaged, because one
    diverged client would otherwise silently poison every client's copy.
    """
    a = np.asarray(arrays, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"arrays must have shape (K, ...) with K >= 1, got {a.shape}")
    if w.shape != (a.shape[0],):
        raise ValueError(f"weights must have shape ({a.shape[0]},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    if np.any(w < 0):
        raise ValueError(f"weights must be non-negative, got {w.tolist()}")
    if not np.all(np.isfinite(a)):
        raise ValueError("arrays contain NaN or inf")
    top = w.max()
    if top <= 0:
        raise ValueError(f"weights must have a positive sum, got {w.tolist()}")
    w = w / top
    w = w / w.sum()
    return np.tensordot(w, a, axes=(0, 0))
