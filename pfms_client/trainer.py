"""Local training and prediction, on tensors in memory or a memory-mapped store.

Batches are index selections of the split (``data.batch(idx)``: a tensor
index, or a gather from the mapped store; no per-row Python, no DataLoader), in
the order of data.batches.batch_indices. The model, the batches and the proximal
step run on ``train.device``; the model is back on the CPU when a call returns. The proximal term's gradient mu * (theta - theta_received) is added
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

from .data.batches import batch_indices
from .data.tensors import TensorSplit
from .metrics import task_metrics

DEVICE_HELP = "auto, cpu, cuda or cuda:<index>"


def device_problem(name: object) -> str | None:
    """Why ``name`` is not a train.device value, or None (no torch import: the config check uses it)."""
    if not isinstance(name, str):
        return f"expected {DEVICE_HELP}"
    if name in ("auto", "cpu", "cuda"):
        return None
    head, _, index = name.partition(":")
    if head == "cuda" and index.isdigit():
        return None
    return f"expected {DEVICE_HELP}"


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU."""
    if (problem := device_problem(name)) is not None:
        raise ValueError(f"train.device={name!r}: {problem}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r}: torch sees no CUDA device here (use auto or cpu)")
    return torch.device(name)


def client_gpu_share(name: str, clients: int) -> float:
    """The GPU fraction a simulated ClientApp asks Ray for: 0 on the CPU, else 1/clients
    (every scenario's client shares one GPU and all of them run at once)."""
    return 1.0 / max(clients, 1) if resolve_device(name).type == "cuda" else 0.0


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    mu: float
    local_steps: int | None = None  # batches per round instead of whole epochs
    device: str = "cpu"

    @classmethod
    def from_config(cls, cfg: Mapping) -> "TrainConfig":
        steps = cfg.get("local_steps")
        tc = cls(
            local_epochs=int(cfg["local_epochs"]),
            batch_size=int(cfg["batch_size"]),
            lr=float(cfg["lr"]),
            weight_decay=float(cfg["weight_decay"]),
            mu=float(cfg["mu"]),
            local_steps=None if steps is None else int(steps),
            device=str(cfg.get("device", "cpu")),
        )
        if (tc.local_epochs < 1 or tc.batch_size < 2 or tc.lr <= 0 or tc.mu < 0
                or (tc.local_steps is not None and tc.local_steps < 1)):
            raise ValueError(f"train config out of range: {tc}")
        if (problem := device_problem(tc.device)) is not None:
            raise ValueError(f"train.device={tc.device!r}: {problem}")
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
    device = resolve_device(cfg.device)
    model.to(device)
    try:
        params = dict(model.named_parameters())
        return _train(model, data, anchor, cfg, seed, [params[n] for n in train_names],
                      [n for n in anchor if n in set(train_names)], device)
    finally:
        model.to("cpu")
        for n, p in model.named_parameters():
            p.requires_grad_(frozen[n])


def _train(model: nn.Module, data: TensorSplit, anchor: Mapping[str, torch.Tensor], cfg: TrainConfig, seed: int,
           train_params: list[torch.Tensor], prox_names: list[str], device: torch.device) -> dict[str, float]:
    params = dict(model.named_parameters())
    prox_params = [params[n] for n in prox_names]
    prox_anchor = [anchor[n].detach().to(device) for n in prox_names]
    opt = torch.optim.Adam(train_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    on_cpu = device.type == "cpu"
    model.train()
    total, batches, rows = torch.zeros((), device=device), 0, 0
    t0 = time.perf_counter()
    for idx in batch_indices(len(data), cfg.batch_size, gen, epochs=cfg.local_epochs, steps=cfg.local_steps):
        x_cat, x_num, y = data.batch(idx)
        if not on_cpu:
            x_cat, x_num, y = (t.to(device, non_blocking=True) for t in (x_cat, x_num, y))
        logits = model(x_cat, x_num)
        loss = F.binary_cross_entropy_with_logits(logits, y)
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
    if not on_cpu:
        torch.cuda.synchronize(device)
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
def predict(model: nn.Module, data: TensorSplit, batch_size: int, device: str = "cpu") -> np.ndarray:
    """Probabilities [N, T], read in consecutive slices of ``batch_size`` rows: what is
    held is the output array, never the split's features."""
    dev = resolve_device(device)
    n = len(data)
    out = np.empty((n, data.num_tasks), dtype=np.float32)
    model.to(dev)
    model.eval()
    try:
        for s in range(0, n, batch_size):
            x_cat, x_num, _ = data.rows(s, s + batch_size)
            p = torch.sigmoid(model(x_cat.to(dev), x_num.to(dev)))
            out[s : s + len(p)] = p.cpu().numpy()
    finally:
        model.to("cpu")
    return out


def evaluate(model: nn.Module, data: TensorSplit, task_names, batch_size: int,
             device: str = "cpu") -> dict[str, dict[str, float]]:
    return task_metrics(data.labels(), predict(model, data, batch_size, device), task_names)
