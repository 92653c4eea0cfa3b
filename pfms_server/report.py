"""The run folder's human-facing outputs: metrics CSV, round tables, AUC plot."""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping


def make_run_dir(cfg: Any) -> Path:
    """``paths.runs/<run_name or timestamp-strategy>``, numbered if the name is taken."""
    root = Path(str(cfg.paths.runs)).expanduser()
    name = cfg.run_name or f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{cfg.strategy.name}"
    run_dir, i = root / str(name), 1
    while run_dir.exists():
        i += 1
        run_dir = root / f"{name}-{i}"
    run_dir.mkdir(parents=True)
    return run_dir


METRIC_FIELDS = ["round", "scenario", "task", "split", "auc", "logloss", "n"]


def rows_from_metrics(server_round: int, scenario: str, metrics: Mapping[str, float]) -> list[dict]:
    """Client evaluate metrics ``<split>.<task>.<auc|logloss>`` -> one row per split/task."""
    rows: dict[tuple[str, str], dict] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[2] not in ("auc", "logloss"):
            continue
        split, task, metric = parts
        row = rows.setdefault(
            (split, task),
            {"round": server_round, "scenario": scenario, "task": task, "split": split,
             "n": int(metrics.get(f"{split}.n", 0))},
        )
        row[metric] = float(value)
    return [rows[k] for k in sorted(rows)]


def append_csv(path: Path, rows: Iterable[dict]) -> None:
    rows = list(rows)
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path, up_to_round: int | None = None) -> list[dict]:
    """Rows of metrics.csv with their types back (a resumed run continues the table)."""
    with path.open(newline="") as fh:
        rows = [
            {"round": int(r["round"]), "scenario": r["scenario"], "task": r["task"], "split": r["split"],
             "auc": float(r["auc"]), "logloss": float(r["logloss"]), "n": int(r["n"])}
            for r in csv.DictReader(fh)
        ]
    return [r for r in rows if up_to_round is None or r["round"] <= up_to_round]


def write_csv(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    append_csv(tmp, rows)
    tmp.replace(path)


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON through a temporary file and a rename: a process killed
    mid-write leaves the previous file whole, never half of the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


def fmt(x: float) -> str:
    return "   nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def round_table(rows: list[dict], split: str) -> list[str]:
    """Lines of the per-round table (round, scenario, task, AUC, LogLoss)."""
    lines = [f"{'round':>5}  {'scenario':<12} {'task':<10} {'AUC':>7} {'LogLoss':>8}"]
    for r in sorted((r for r in rows if r["split"] == split), key=lambda r: (r["scenario"], r["task"])):
        lines.append(
            f"{r['round']:>5}  {r['scenario']:<12} {r['task']:<10} {fmt(r.get('auc')):>7} {fmt(r.get('logloss')):>8}"
        )
    return lines


def mean_of(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    return sum(vals) / len(vals) if vals else math.nan


def plot_auc(csv_path: Path, png_path: Path, split: str = "test") -> None:
    """Per-round AUC, one line per scenario, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    df = df[df["split"] == split]
    if df.empty:
        return
    tasks = sorted(df["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for scenario, grp in df[df["task"] == task].groupby("scenario"):
            grp = grp.sort_values("round")
            ax.plot(grp["round"], grp["auc"], marker="o", label=str(scenario))
        ax.set_title(f"{task} ({split})")
        ax.set_xlabel("round")
        ax.set_ylabel("AUC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
