"""Task-tower personalized aggregation (spec section 5).

For one tower tensor of one task, stacked over the K clients that uploaded it
(flattened to (K, n)), each client mixes in the others' updates weighted by
update similarity: clients whose towers move alike help each other most, and
a client always attends to itself. beta_k scales the mix and is learned with
the same hypergradient rule as alpha (see personalize.py); the returned
direction is d next / d beta for that rule.

Pure numpy; the Strategy loops over tasks and tensors.
"""

from __future__ import annotations

import numpy as np

from .fedavg import weighted_average

MODES = ("attention", "fedavg", "local")


def _check_deltas(deltas: np.ndarray, name: str = "deltas") -> np.ndarray:
    d = np.asarray(deltas, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
        raise ValueError(f"{name} must have shape (K, n) with K, n >= 1, got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name} contain NaN or inf")
    return d


def attention_weights(deltas: np.ndarray) -> np.ndarray:
    """a (K, K), a_kj = softmax_j(<delta_k, delta_j> / sqrt(n)); rows sum to 1.

    Inner products are taken on deltas / max|delta| and the row maximum is
    subtracted before scaling back, so huge updates cannot overflow into NaN
    (logits beyond float64 saturate to a hard max instead).
    """
    d = _check_deltas(deltas)
    s = float(np.abs(d).max())
    if s == 0.0:
        return np.full((d.shape[0], d.shape[0]), 1.0 / d.shape[0])
    u = d / s
    g = u @ u.T
    factor = min(s * s / np.sqrt(d.shape[1]), float(np.finfo(np.float64).max))
    with np.errstate(over="ignore"):
        z = (g - g.max(axis=1, keepdims=True)) * factor  # <= 0, row max exactly 0
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def attention_mix(deltas: np.ndarray) -> np.ndarray:
    """u (K, n), u_k = sum_j a_kj delta_j."""
    d = _check_deltas(deltas)
    return attention_weights(d) @ d


def tower_next(
    sent: np.ndarray,
    deltas: np.ndarray,
    beta: np.ndarray,
    mode: str,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Next tower tensors (K, n) and d next / d beta (K, n) for one tower tensor.

    mode "attention": next_k = sent_k + delta_k + beta_k u_k, direction_k = u_k.
    mode "fedavg": every row is the mean of sent_k + delta_k weighted by
    ``weights`` (sample counts; uniform when None); direction 0.
    mode "local": next_k = sent_k + delta_k (the client's own tower); direction 0.
    """
    if mode not in MODES:
        raise ValueError(f"unknown tower mode {mode!r}; valid: {', '.join(MODES)}")
    d = _check_deltas(deltas)
    p = _check_deltas(sent, "sent")
    if p.shape != d.shape:
        raise ValueError(f"sent shape {p.shape} != deltas shape {d.shape}")
    k = d.shape[0]
    b = np.asarray(beta, dtype=np.float64)
    if b.shape != (k,):
        raise ValueError(f"beta must have shape ({k},), got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("beta contains NaN or inf")
    local = p + d
    zeros = np.zeros_like(local)
    if mode == "local":
        return local, zeros
    if mode == "fedavg":
        w = np.ones(k) if weights is None else weights
        avg = weighted_average(local, w)
        return np.broadcast_to(avg, local.shape).copy(), zeros
    u = attention_mix(d)
    return local + b[:, None] * u, u
