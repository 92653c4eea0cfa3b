"""Centralized baseline: pooled rows, scenario id as a feature; a reference that ignores privacy.

Every scenario's rows are pooled on one machine and one MMoE (the same backbone
and ``model`` config as the federated runs) is trained on them, with the
scenario id as one more categorical field. There is nothing to federate, so this
runs without Flower: ``run_centralized(cfg, run_dir)`` or
``python -m pfms_server.experiments.centralized strategy=centralized [overrides...]``.

Comparable with the federated runs by construction:

* the same files, read by the dataset's reader, and the same validation split:
  each scenario's train file is split exactly as its client splits it
  (``validation_indices`` with ``dataset.split``), so each scenario's val and
  test rows are exactly the rows that client evaluates on, and the pooled train
  rows are the union of the clients' train rows;
* one vocabulary and one numeric scaler, fitted on the pooled train rows only
  (``build_scenario_data`` itself, so encoding never drifts from the clients');
* the same model seed (``cfg.seed``) and ``train.*`` settings; a "round" is
  ``train.local_epochs`` epochs over the shuffled pooled train rows, so per round
  the model sees as many training samples as all clients together (the sum of
  their rows): a fair "same epochs" comparison. Shuffling and dropout are seeded
  from ``cfg.seed`` and the round, as a client seeds them;
* evaluation after the rounds the server would evaluate (``eval.every`` and
  always the last one), per scenario and task on ``eval.splits``, and the same
  run folder: config.yaml, metrics.csv (round, scenario, task, split, auc,
  logloss, n), summary.json (the keys ``pfms_server.server_app.summarize``
  writes), train_log.json (upload_bytes 0: nothing is sent), auc.png and
  checkpoints/centralized.pt.
"""

from __future__ import annotations

import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from pfms_client.data.readers import read_scenario
from pfms_client.data.schema import DatasetSchema
from pfms_client.data.settings import DatasetSettings
from pfms_client.data.tensors import TensorSplit, build_scenario_data, validation_indices
from pfms_client.local_update import train_config
from pfms_client.mmoe import MMoE, build_model
from pfms_client.trainer import evaluate, train_local

from .. import report

ALGORITHM = "centralized"
SCENARIO_COLUMN = "scenario_id"
POOLED = "pooled"  # the train_log's "scenario": one trainer for all of them
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PooledData:
    """Every scenario's rows encoded with one vocabulary; train rows pooled for training.

    ``parts[scenario][split]`` are that scenario's rows of each split (its train
    rows are a slice of ``train``, which holds the scenarios one after another).
    """

    scenarios: list[str]
    train: TensorSplit
    parts: dict[str, dict[str, TensorSplit]]
    field_dims: list[int]  # the dataset's categorical fields, then the scenario id
    num_numerical: int
    task_names: list[str]
    categorical_names: list[str]
    numerical_names: list[str]
    scenario_column: str

    @property
    def positive_rates(self) -> list[float]:
        """Pooled train positive rate per task."""
        return [float(r) for r in self.train.y.double().mean(dim=0)] if len(self.train) else []


def scenario_column(schema: DatasetSchema) -> str:
    """``scenario_id``, or with leading underscores where the data set has such a column."""
    name = SCENARIO_COLUMN
    while name in schema.columns:
        name = "_" + name
    return name


def pool_scenarios(cfg_dataset: Any) -> PooledData:
    """Read every scenario as its client does, add the scenario id, encode with one pooled vocabulary."""
    from pfms_client.data import ensure_generated

    settings = DatasetSettings.from_config(cfg_dataset)
    scenarios = list(settings.scenarios)
    if settings.generator is not None:
        ensure_generated(settings, scenarios)
    if settings.source is not None:
        from pfms_client.data.movielens.convert import ensure_converted

        ensure_converted(settings, scenarios)
    column = scenario_column(settings.schema)
    train_parts, held_parts = [], []
    for i, scenario in enumerate(scenarios):
        train_df, test_df = read_scenario(settings, scenario)
        # The client's own split (build_scenario_data): same fraction, seed and row order.
        train_idx, val_idx = validation_indices(
            len(train_df), settings.split.val_fraction, settings.split.seed
        )
        train_parts.append(train_df.iloc[train_idx].assign(**{column: i}))
        held_parts.append(train_df.iloc[val_idx].assign(**{column: i}))
        held_parts.append(test_df.assign(**{column: i}))
    # The pooled train rows are the "train file" of one scenario without a validation
    # split; every scenario's val and test rows are its "test file", cut apart below.
    pooled_settings = replace(
        settings,
        schema=replace(settings.schema, categorical=settings.schema.categorical + (column,)),
        split=replace(settings.split, val_fraction=0.0),
    )
    data = build_scenario_data(
        POOLED,
        pd.concat(train_parts, ignore_index=True),
        pd.concat(held_parts, ignore_index=True),
        pooled_settings,
    )
    parts: dict[str, dict[str, TensorSplit]] = {}
    train_at = held_at = 0
    for i, scenario in enumerate(scenarios):
        n_train, n_val, n_test = len(train_parts[i]), len(held_parts[2 * i]), len(held_parts[2 * i + 1])
        parts[scenario] = {
            "train": data.train.select(slice(train_at, train_at + n_train)),
            "val": data.test.select(slice(held_at, held_at + n_val)),
            "test": data.test.select(slice(held_at + n_val, held_at + n_val + n_test)),
        }
        train_at += n_train
        held_at += n_val + n_test
    return PooledData(
        scenarios=scenarios,
        train=data.train,
        parts=parts,
        field_dims=list(data.field_dims),
        num_numerical=data.num_numerical,
        task_names=list(data.task_names),
        categorical_names=list(data.categorical_names),
        numerical_names=list(data.numerical_names),
        scenario_column=column,
    )


def round_seed(seed: int, server_round: int) -> int:
    """The client's per-round seed formula, with "centralized" in place of a scenario name."""
    return (int(seed) * 1_000_003 + server_round * 7919 + zlib.crc32(ALGORITHM.encode())) % 2**31


def eval_due(server_round: int, every: int, num_rounds: int) -> bool:
    """The server's rule: every ``eval.every`` rounds and always the last one."""
    return server_round > 0 and (server_round % every == 0 or server_round == num_rounds)


def evaluate_round(model: MMoE, data: PooledData, server_round: int, splits: Sequence[str],
                   batch_size: int) -> list[dict]:
    """Per scenario, the metrics a client reports, turned into rows as the server turns them."""
    rows: list[dict] = []
    for scenario in data.scenarios:
        metrics: dict[str, float] = {}
        for split in splits:
            part = data.parts[scenario][split]
            metrics[f"{split}.n"] = len(part)
            for task, m in evaluate(model, part, data.task_names, batch_size).items():
                metrics[f"{split}.{task}.auc"] = m["auc"]
                metrics[f"{split}.{task}.logloss"] = m["logloss"]
        rows += report.rows_from_metrics(server_round, scenario, metrics)
    return rows


def summarize(rows: list[dict], scenarios: Sequence[str], num_rounds: int, eval_splits: Sequence[str],
              seconds: float) -> dict:
    """The keys of ``pfms_server.server_app.summarize``, without a Strategy object."""
    last = max((r["round"] for r in rows), default=None)
    final = [r for r in rows if r["round"] == last]
    out: dict = {"strategy": ALGORITHM, "rounds": num_rounds, "seconds": round(seconds, 1), "final_round": last,
                 "hyperparams": {s: {"alpha": None, "beta_mean": None} for s in sorted(scenarios)},
                 "final": final}
    for split in eval_splits:
        split_rows = [r for r in final if r["split"] == split]
        out[f"{split}_mean_auc"] = report.mean_of(split_rows, "auc")
        out[f"{split}_mean_logloss"] = report.mean_of(split_rows, "logloss")
    # Model selection on validation only: the round with the best mean val AUC.
    rounds = sorted({r["round"] for r in rows if r["split"] == "val"})
    if rounds and "test" in eval_splits:
        val_auc = {k: report.mean_of([r for r in rows if r["round"] == k and r["split"] == "val"], "auc")
                   for k in rounds}
        best = max(rounds, key=lambda k: (-1.0 if math.isnan(val_auc[k]) else val_auc[k], -k))
        out["best_val_round"] = best
        out["best_val_round_test_mean_auc"] = report.mean_of(
            [r for r in rows if r["round"] == best and r["split"] == "test"], "auc")
    return out


def _check(cfg: DictConfig) -> list[str]:
    algorithm = str(cfg.strategy.algorithm)
    if algorithm != ALGORITHM:
        raise ValueError(f"run_centralized needs strategy=centralized, got strategy.algorithm={algorithm!r}")
    if cfg.get("resume"):
        raise ValueError("resume is not supported by the centralized baseline: start the run again")
    if int(cfg.num_rounds) < 1 or int(cfg.eval.every) < 1:
        raise ValueError("num_rounds and eval.every must be >= 1")
    splits = [str(s) for s in cfg.eval.splits]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown evaluation split(s) {unknown}; expected some of {list(SPLITS)}")
    return splits


def _save_checkpoint(model: MMoE, data: PooledData, cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(
        {
            "scenario": POOLED,
            "scenarios": list(data.scenarios),  # scenario_id raw value = index in this list
            "scenario_column": data.scenario_column,
            "state_dict": model.state_dict(),
            "field_dims": list(data.field_dims),
            "num_numerical": data.num_numerical,
            "task_names": list(data.task_names),
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        tmp,
    )
    tmp.replace(path)


def run_centralized(cfg: DictConfig, run_dir: Path) -> tuple[list[dict], dict]:
    """Train the pooled MMoE for ``num_rounds`` rounds and write the run folder; returns (rows, summary)."""
    splits = _check(cfg)
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    metrics_csv = run_dir / "metrics.csv"
    metrics_csv.unlink(missing_ok=True)  # a fresh run: never append to an old table

    t0 = time.perf_counter()
    data = pool_scenarios(cfg.dataset)
    num_rounds, seed = int(cfg.num_rounds), int(cfg.seed)
    model = build_model(cfg.model, data.field_dims, data.num_numerical, len(data.task_names), seed,
                        positive_rates=data.positive_rates)
    tcfg = train_config(cfg)
    rows: list[dict] = []
    train_log: list[dict] = []
    for server_round in range(1, num_rounds + 1):
        rseed = round_seed(seed, server_round)
        torch.manual_seed(rseed)  # dropout masks differ per round
        stats = train_local(model, data.train, {}, tcfg, rseed)
        train_log.append({"round": server_round, "scenario": POOLED, "train_bce": stats["train_bce"],
                          "num_examples": len(data.train), "upload_bytes": 0})
        line = (f"[centralized] round {server_round}/{num_rounds}: train_bce {stats['train_bce']:.4f} "
                f"on {len(data.train)} rows in {stats['seconds']:.1f} s")
        if eval_due(server_round, int(cfg.eval.every), num_rounds):
            new = evaluate_round(model, data, server_round, splits, int(cfg.eval.batch_size))
            rows += new
            report.append_csv(metrics_csv, new)
            for split in splits:
                line += f", {split} mean AUC {report.fmt(report.mean_of([r for r in new if r['split'] == split], 'auc'))}"
            if server_round == num_rounds:
                _save_checkpoint(model, data, cfg, run_dir / "checkpoints" / f"{ALGORITHM}.pt")
        print(line, flush=True)

    summary = summarize(rows, data.scenarios, num_rounds, splits, time.perf_counter() - t0)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (run_dir / "train_log.json").write_text(json.dumps(train_log, indent=1, default=str))
    if cfg.server.plot and metrics_csv.exists():
        report.plot_auc(metrics_csv, run_dir / "auc.png")
    tail = ", ".join(f"{s} mean AUC {report.fmt(summary[f'{s}_mean_auc'])}" for s in splits)
    print(f"[centralized] {num_rounds} rounds in {summary['seconds']:.1f} s: {tail}; run folder {run_dir}", flush=True)
    return rows, summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pfms_server.experiments.centralized [hydra overrides]``; strategy=centralized is implied."""
    from pfms_client.config import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.split("=", 1)[0].lstrip("+~") == "strategy" for a in args):
        args.insert(0, "strategy=centralized")
    cfg = load_config(args)
    run_centralized(cfg, report.make_run_dir(cfg))


if __name__ == "__main__":
    main()
