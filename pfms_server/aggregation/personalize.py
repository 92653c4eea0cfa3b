"""Personalized aggregation with learnable weights (spec sections 4 and 5).

Each client k gets theta_k(next) = theta_k(sent) + D_k + alpha_k * d. alpha_k
(and the tower weights beta) are learned on the server by a hypergradient:
after the client trains from what it was sent, g = theta(sent) - theta(trained)
is a descent-direction proxy for dL/dtheta at theta(sent), so
dL/dalpha ~= <g, d theta(sent) / d alpha> = <g, d>. The step is SGD with
momentum and weight decay, then a clamp to [0, 1].

Pure numpy; the Strategy keeps one HyperParam per client (and per tower
layer) and checkpoints it through to_dict()/from_dict().
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _same_shape(**arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    out = tuple(np.asarray(a, dtype=np.float64) for a in arrays.values())
    shapes = {name: a.shape for name, a in zip(arrays, out)}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes differ: {shapes}")
    return out


def personalized_next(
    sent: np.ndarray, delta: np.ndarray, d: np.ndarray, alpha: float | np.ndarray
) -> np.ndarray:
    """sent + delta + alpha * d, the next personalized parameters of one client.

    alpha is a scalar, or one value per leading-axis slice (per expert when
    experts are stacked on axis 0), broadcast over the remaining axes.
    """
    sent, delta, d = _same_shape(sent=sent, delta=delta, d=d)
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim == 1 and sent.ndim >= 1 and a.shape[0] == sent.shape[0]:
        a = a.reshape(a.shape + (1,) * (sent.ndim - 1))
    elif a.ndim != 0:
        lead = f" or ({sent.shape[0]},)" if sent.ndim else ""
        raise ValueError(
            f"alpha must have shape (){lead} for params of shape {sent.shape}, got {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError("alpha contains NaN or inf")
    return sent + delta + a * d


def hypergradient(
    sent_prev: np.ndarray, local_trained: np.ndarray, direction: np.ndarray
) -> float:
    """<sent_prev - local_trained, direction>: the hypergradient of the weight.

    direction = d theta_sent / d alpha for the params sent last round (the d
    that alpha scaled). Positive means local training pushed against d, so
    alpha should shrink.
    """
    sent_prev, local_trained, direction = _same_shape(
        sent_prev=sent_prev, local_trained=local_trained, direction=direction
    )
    g = (sent_prev - local_trained).ravel()
    out = float(g @ direction.ravel())
    if not np.isfinite(out):
        raise ValueError("hypergradient is not finite")
    return out


def _as_value(x: Any, name: str) -> np.ndarray:
    a = np.array(x, dtype=np.float64)  # copy: a HyperParam never aliases caller data
    if a.ndim > 1:
        raise ValueError(f"{name} must have shape () or (E,), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


@dataclass
class HyperParam:
    """A learnable personalization weight (alpha or beta) with its SGD momentum buffer.

    value has shape () (one weight) or (E,) (one per expert/layer); momentum
    is None until the first step with momentum, as in torch.optim.SGD.
    """

    value: np.ndarray
    momentum: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.value = _as_value(self.value, "value")
        if self.momentum is not None:
            self.momentum = _as_value(self.momentum, "momentum")
            if self.momentum.shape != self.value.shape:
                raise ValueError(
                    f"momentum shape {self.momentum.shape} != value shape {self.value.shape}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: floats for shape (), lists for shape (E,)."""
        return {
            "value": self.value.tolist(),
            "momentum": None if self.momentum is None else self.momentum.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperParam:
        """Inverse of to_dict (a float restores shape (), a list shape (E,))."""
        if "value" not in data:
            raise ValueError(f"HyperParam dict needs a 'value', got keys {sorted(data)}")
        return cls(value=data["value"], momentum=data.get("momentum"))


def sgd_step(
    p: HyperParam,
    grad: np.ndarray | float,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    lo: float = 0.0,
    hi: float = 1.0,
) -> HyperParam:
    """One torch.optim.SGD step (dampening 0, no Nesterov), then clamp to [lo, hi].

    grad += wd * value; buf = grad on the first step, else momentum * buf + grad;
    value -= lr * buf. Returns a new HyperParam; p is not modified.
    """
    g = np.asarray(grad, dtype=np.float64)
    if g.shape != p.value.shape:
        raise ValueError(f"grad shape {g.shape} != value shape {p.value.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("grad contains NaN or inf")
    for name, x in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not np.isfinite(x) or x < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {x}")
    if not lo <= hi:
        raise ValueError(f"need lo <= hi, got [{lo}, {hi}]")
    g = g + weight_decay * p.value
    if momentum != 0:
        buf = g.copy() if p.momentum is None else momentum * p.momentum + g
        step = buf
    else:
        buf, step = p.momentum, g
    value = np.clip(p.value - lr * step, lo, hi)
    return HyperParam(value=value, momentum=buf)
