"""Local training and prediction on tensors already in memory.

Batches are index slices of the scenario's tensors (no per-row Python, no
DataLoader). The proximal term's gradient mu * (theta - theta_received) is added
straight to the gradients of the uploaded tensors, which is the exact gradient of
mu/2 * ||theta_up - theta_up_received||^2 without a second autograd graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Collection, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data.tensors import TensorSplit
from .metrics import task_metrics


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    mu: float

    @classmethod
    def from_config(cls, cfg: Mapping) -> "TrainConfig":
        tc = cls(
            local_epochs=int(cfg["local_epochs"]),
            batch_size=int(cfg["batch_size"]),
            lr=float(cfg["lr"]),
            weight_decay=float(cfg["weight_decay"]),
            mu=float(cfg["mu"]),
        )
        if tc.local_epochs < 1 or tc.batch_size < 2 or tc.lr <= 0 or tc.mu < 0:
            raise ValueError(f"train config out of range: {tc}")
        return tc


def train_local(
    model: nn.Module,
    data: TensorSplit,
    anchor: Mapping[str, torch.Tensor],
    cfg: TrainConfig,
    seed: int,
    trainable: Collection[str] | None = None,
) -> dict[str, float]:
    """E epochs of Adam on mean-over-tasks BCE plus the proximal term to ``anchor``.

    ``trainable`` (parameter names) freezes every other parameter, for FedRep's
    head-then-body schedule; None trains them all.
    """
    params = dict(model.named_parameters())
    if trainable is not None:
        unknown = set(trainable) - set(params)
        if unknown:
            raise ValueError(f"trainable names that are not parameters: {sorted(unknown)[:5]}")
    train_names = list(params) if trainable is None else [n for n in params if n in set(trainable)]
    frozen = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in set(train_names))
    try:
        return _train(model, data, anchor, cfg, seed, [params[n] for n in train_names],
                      [n for n in anchor if n in set(train_names)])
    finally:
        for n, p in params.items():
            p.requires_grad_(frozen[n])


def _train(model: nn.Module, data: TensorSplit, anchor: Mapping[str, torch.Tensor], cfg: TrainConfig, seed: int,
           train_params: list[torch.Tensor], prox_names: list[str]) -> dict[str, float]:
    params = dict(model.named_parameters())
    prox_params = [params[n] for n in prox_names]
    prox_anchor = [anchor[n].detach() for n in prox_names]
    opt = torch.optim.Adam(train_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = data.y.shape[0]
    model.train()
    total, batches, rows = torch.zeros(()), 0, 0
    t0 = time.perf_counter()
    for _ in range(cfg.local_epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            if idx.numel() < 2:  # BatchNorm needs two rows in train mode
                continue
            logits = model(data.x_cat[idx], data.x_num[idx])
            loss = F.binary_cross_entropy_with_logits(logits, data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.mu > 0 and prox_params:
                with torch.no_grad():
                    diffs = torch._foreach_sub(prox_params, prox_anchor)
                    torch._foreach_add_([p.grad for p in prox_params], diffs, alpha=cfg.mu)
            opt.step()
            total += loss.detach()
            batches += 1
            rows += idx.numel()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        prox = sum(float((p - a).pow(2).sum()) for p, a in zip(prox_params, prox_anchor))
    return {
        "train_bce": float(total) / max(batches, 1),
        "prox": 0.5 * cfg.mu * prox,
        "rows": float(rows),
        "seconds": seconds,
        "samples_per_s": rows / seconds if seconds > 0 else 0.0,
    }


@torch.no_grad()
def predict(model: nn.Module, data: TensorSplit, batch_size: int) -> np.ndarray:
    model.eval()
    out = [
        torch.sigmoid(model(data.x_cat[s : s + batch_size], data.x_num[s : s + batch_size]))
        for s in range(0, data.y.shape[0], batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, data.y.shape[1]), dtype=np.float32)


def evaluate(model: nn.Module, data: TensorSplit, task_names, batch_size: int) -> dict[str, dict[str, float]]:
    return task_metrics(data.y.numpy(), predict(model, data, batch_size), task_names)
