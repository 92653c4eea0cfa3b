"""Per-task AUC and LogLoss (scikit-learn), the numbers every report is made of."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def task_metrics(y: np.ndarray, p: np.ndarray, task_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """AUC is NaN when a split holds one class only (it is undefined there, not 0.5)."""
    from sklearn.metrics import log_loss, roc_auc_score  # lazily: 1.5 s of import a train message never needs
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(task_names):
        raise ValueError(f"labels {y.shape} and predictions {p.shape} do not match {len(task_names)} tasks")
    out: dict[str, dict[str, float]] = {}
    for t, name in enumerate(task_names):
        yt, pt = y[:, t], np.clip(p[:, t].astype(np.float64), 1e-7, 1 - 1e-7)
        auc = float(roc_auc_score(yt, pt)) if 0 < yt.sum() < len(yt) else math.nan
        ll = float(log_loss(yt, pt, labels=[0, 1])) if len(yt) else math.nan
        out[name] = {"auc": auc, "logloss": ll, "n": float(len(yt)), "positives": float(yt.sum())}
    return out
