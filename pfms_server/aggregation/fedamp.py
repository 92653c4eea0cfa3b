"""FedAMP-style similarity-weighted personalized aggregation (HeurFedAMP, Huang et al. 2021).

Each scenario k receives its own cloud model u_k = xi_kk w_k + sum_{j != k} xi_kj w_j:
a fixed self weight xi_kk, and the rest spread over the other clients by a softmax of
sigma * cos(w_k, w_j), so scenarios with similar models help each other more. Clients
then train with a proximal term towards u_k (strategy.mu).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .state import Arrays, ServerState


@dataclass(frozen=True)
class FedAMPConfig:
    self_weight: float
    sigma: float

    @classmethod
    def from_config(cls, s: Mapping[str, Any]) -> "FedAMPConfig":
        cfg = cls(float(s["fedamp"]["self_weight"]), float(s["fedamp"]["sigma"]))
        if not 0.0 <= cfg.self_weight <= 1.0 or cfg.sigma < 0:
            raise ValueError(f"strategy.fedamp out of range: {cfg}")
        return cfg


def attention_weights(vectors: np.ndarray, self_weight: float, sigma: float) -> np.ndarray:
    """Row k: how much scenario k's cloud model takes from each client (rows sum to 1)."""
    k = vectors.shape[0]
    if k == 1:
        return np.ones((1, 1))
    # Cosines of unit vectors: each row is first divided by its largest |entry|, so
    # models anywhere in float64's range neither overflow nor underflow (a zero
    # model has cosine 0 with every other).
    scale = np.abs(vectors).max(axis=1, keepdims=True)
    v = vectors / np.where(scale > 0, scale, 1.0)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = v / np.where(norms > 0, norms, 1.0)
    logits = sigma * (unit @ unit.T)
    np.fill_diagonal(logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    others = np.exp(logits)
    others /= others.sum(axis=1, keepdims=True)
    return (1.0 - self_weight) * others + self_weight * np.eye(k)


def fedamp_round(
    state: ServerState, uploads: Mapping[str, Arrays], num_examples: Mapping[str, int], cfg: FedAMPConfig
) -> ServerState:
    new = copy.deepcopy(state)
    scen = sorted(uploads)
    if not scen:
        return new
    names = sorted(uploads[scen[0]])
    float_names = [n for n in names if uploads[scen[0]][n].dtype.kind == "f"]
    flat = np.stack([np.concatenate([uploads[k][n].astype(np.float64).ravel() for n in float_names]) for k in scen])
    xi = attention_weights(flat, cfg.self_weight, cfg.sigma)
    for i, k in enumerate(scen):
        own = new.own(k)
        for n in names:
            like = uploads[k][n]
            if like.dtype.kind != "f":  # integer buffers (BN counters): keep the client's own
                own.arrays[n] = like.copy()
                continue
            mix = np.tensordot(xi[i], np.stack([uploads[j][n].astype(np.float64) for j in scen]), axes=(0, 0))
            own.arrays[n] = mix.astype(like.dtype)
        own.num_examples = int(num_examples[k])
    new.round = state.round + 1
    return new
