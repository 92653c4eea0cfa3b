"""The local update a strategy runs on a client, chosen by ``strategy.client.mode``.

plain: E epochs on the whole model with the proximal term to the received tensors
(PF-MSMTrec, FedAvg, FedProx, FedBN, FedPer, FedAMP). fedrep: the head (towers)
first with the body frozen, then the body with the head frozen. ditto: the plain
update of the global model, plus a personal model trained towards the received one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import nn

from .data.tensors import TensorSplit
from .template import Group, classify
from .trainer import TrainConfig, train_local

MODES = ("plain", "fedrep", "ditto")


def client_mode(strategy: Mapping[str, Any]) -> str:
    mode = str(strategy["client"]["mode"])
    if mode not in MODES:
        raise ValueError(f"strategy.client.mode={mode!r}: expected one of {list(MODES)}")
    return mode


def train_config(cfg: Mapping[str, Any]) -> TrainConfig:
    """train.*, with the strategy's own proximal weight when it sets one."""
    tcfg = TrainConfig.from_config(cfg["train"])
    mu = cfg["strategy"].get("mu")
    return replace(tcfg, mu=float(mu)) if mu is not None else tcfg


def fedrep_update(model: nn.Module, data: TensorSplit, anchor: Mapping[str, torch.Tensor], tcfg: TrainConfig,
                  seed: int, head_epochs: int) -> dict[str, float]:
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if classify(n).group is Group.TOWER]
    body = [n for n in names if n not in set(head)]
    h = train_local(model, data, {}, replace(tcfg, local_epochs=int(head_epochs), mu=0.0), seed, trainable=head)
    b = train_local(model, data, anchor, tcfg, seed + 1, trainable=body)
    seconds = h["seconds"] + b["seconds"]
    rows = h["rows"] + b["rows"]
    return {**b, "head_bce": h["train_bce"], "rows": rows, "seconds": seconds,
            "samples_per_s": rows / seconds if seconds > 0 else 0.0}


def ditto_personal_update(personal: nn.Module, data: TensorSplit, anchor: Mapping[str, torch.Tensor],
                          tcfg: TrainConfig, seed: int, lam: float) -> dict[str, float]:
    """Ditto's personal step: the same loss, pulled towards the received global tensors by lam."""
    return train_local(personal, data, anchor, replace(tcfg, mu=float(lam)), seed + 2)
