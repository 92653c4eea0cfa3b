"""Sample-weighted FedAvg: the rule for PF-MSMTrec's global-shared experts G, and the
whole server side of the FedAvg-family baselines.

Pure numpy; the Strategy stacks one tensor over the clients that uploaded it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Mapping

import numpy as np

Arrays = dict[str, np.ndarray]

if TYPE_CHECKING:
    from .state import ServerState


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


def average(uploads: list[Arrays], weights: np.ndarray, name: str) -> np.ndarray:
    """One named tensor averaged over clients, in its own dtype (integer counters rounded)."""
    like = uploads[0][name]
    avg = weighted_average(np.stack([u[name] for u in uploads]), weights)
    return np.rint(avg).astype(like.dtype) if like.dtype.kind in "iu" else avg.astype(like.dtype)


def fedavg_round(state: "ServerState", uploads: Mapping[str, Arrays], num_examples: Mapping[str, int]) -> "ServerState":
    """FedAvg and its family (FedProx, FedBN, FedPer, FedRep, Ditto): every uploaded tensor
    becomes the sample-weighted mean, one copy that every scenario receives next."""
    new = copy.deepcopy(state)
    scen = sorted(uploads)
    if not scen:
        return new
    weights = np.array([float(num_examples[k]) for k in scen])
    scen_uploads = [uploads[k] for k in scen]
    for name in sorted(scen_uploads[0]):
        new.global_arrays[name] = average(scen_uploads, weights, name)
    for k in scen:
        new.own(k).num_examples = int(num_examples[k])
    new.round = state.round + 1
    return new
