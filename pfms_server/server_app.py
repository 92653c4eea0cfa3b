"""Flower ServerApp: build PF-MSMTrec from the Hydra config, run it, write the run folder.

Run folder (``paths.runs/<run_name>``): config.yaml, metrics.csv (round, scenario,
task, split, auc, logloss, n), auc.png, summary.json, checkpoints/<scenario>.pt
(written by each client at the last evaluation) and server_state/ (round, alpha,
beta and every scenario's personalized tensors, rewritten after each round).
"""

from __future__ import annotations

import json
import math
import sys
import time
from logging import ERROR, INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log
from omegaconf import DictConfig, OmegaConf

from pfms_client.config import ConfigError

from . import report
from .config_check import load_run_config
from .data_check import check_scenarios
from .aggregation.pfmsmtrec import hyperparams
from .aggregation.rules import make_rule
from .aggregation.state import ServerState
from .strategy import ScenarioStrategy

app = ServerApp()

COMPLETED, FAILED = "completed", "failed"  # summary.json "status"


class RunFailed(RuntimeError):
    """The run could not do its job (bad data, no round aggregated, a scenario never trained).

    Raised by the ServerApp's main after the summary is written, so Flower marks the
    run ``finished:failed`` and its status details carry this one-line message."""


def build_strategy(cfg: DictConfig, run_dir: Path | None, state: ServerState | None = None) -> ScenarioStrategy:
    part = cfg.strategy.participation
    return ScenarioStrategy(
        make_rule(cfg.strategy, seed=int(cfg.seed)),
        [str(s) for s in cfg.dataset.scenarios],
        seed=int(cfg.seed),
        num_rounds=int(cfg.num_rounds),
        min_available_nodes=part.min_available_nodes,
        min_train_nodes=int(part.min_train_nodes),
        fraction_train=float(part.fraction_train),
        eval_every=int(cfg.eval.every),
        eval_splits=[str(s) for s in cfg.eval.splits],
        run_dir=run_dir,
        round_timeout=float(cfg.server.round_timeout),
        state=state,
        poll_interval=float(cfg.server.poll_interval),
    )


def summarize(strategy: ScenarioStrategy, seconds: float) -> dict:
    """Final-round metrics per scenario and task, and their mean."""
    last = max((r["round"] for r in strategy.rows), default=None)
    final = [r for r in strategy.rows if r["round"] == last]
    out: dict = {"strategy": strategy.rule.name, "rounds": strategy.num_rounds, "seconds": round(seconds, 1), "final_round": last,
                 "hyperparams": hyperparams(strategy.state), "final": final}
    for split in strategy.eval_splits:
        rows = [r for r in final if r["split"] == split]
        out[f"{split}_mean_auc"] = report.mean_of(rows, "auc")
        out[f"{split}_mean_logloss"] = report.mean_of(rows, "logloss")
    # Model selection on validation only: the round with the best mean val AUC.
    rounds = sorted({r["round"] for r in strategy.rows if r["split"] == "val"})
    if rounds and "test" in strategy.eval_splits:
        val_auc = {k: report.mean_of([r for r in strategy.rows if r["round"] == k and r["split"] == "val"], "auc")
                   for k in rounds}
        best = max(rounds, key=lambda k: (-1.0 if math.isnan(val_auc[k]) else val_auc[k], -k))
        test_rows = [r for r in strategy.rows if r["round"] == best and r["split"] == "test"]
        out["best_val_round"] = best
        out["best_val_round_test_mean_auc"] = report.mean_of(test_rows, "auc")
    return out


def failure(strategy: ScenarioStrategy) -> str | None:
    """Why the run failed in one line, or None: no round aggregated, or some scenario never trained.

    Counts every round of the run folder (``train_log`` holds one entry per scenario
    per aggregated round, a resumed run's earlier rounds included)."""
    aggregated = sorted({int(r["round"]) for r in strategy.train_log})
    trained = {str(r["scenario"]) for r in strategy.train_log}
    never = [s for s in strategy.scenarios if s not in trained]
    last_why = next((r["why"] for r in reversed(strategy.round_results) if "why" in r), None)
    problems: dict[str, str] = {}
    for r in strategy.round_results:
        problems.update({k: v for k, v in r["problems"].items() if k in never})
    seen = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
    if not aggregated:
        rounds = strategy.round_results[-1]["round"] if strategy.round_results else 0
        return (f"no round aggregated in {rounds} round(s)" + (f" (last: {last_why})" if last_why else "")
                + (f"; {seen}" if seen else ""))
    if never:
        return (f"scenario(s) {', '.join(never)} never trained (rounds aggregated: {len(aggregated)})"
                + (f"; {seen}" if seen else ""))
    return None


def log_summary(summary: dict, run_dir: Path | None) -> None:
    log(INFO, "")
    title = "PF-MSMTrec" if summary.get("name", "pfmsmtrec") == "pfmsmtrec" else summary["name"]
    log(INFO, "=== %s summary: %d rounds in %.1f s ===", title, summary["rounds"], summary["seconds"])
    split = "test" if any(r["split"] == "test" for r in summary["final"]) else None
    if split:
        for line in report.round_table(summary["final"], split):
            log(INFO, "  %s", line)
    for key in sorted(k for k in summary if k.split("_")[0] in ("train", "val", "test") and "_mean_" in k):
        if not math.isnan(summary[key]):
            log(INFO, "  %-22s %.4f", key, summary[key])
    if "best_val_round" in summary:
        log(INFO, "  best round by mean val AUC: %d (test mean AUC there %.4f)",
            summary["best_val_round"], summary["best_val_round_test_mean_auc"])
    for scenario, hp in summary["hyperparams"].items():
        beta = "-" if hp["beta_mean"] is None else f"{hp['beta_mean']:.4f}"
        alpha = "-" if hp["alpha"] is None else np.round(hp["alpha"], 4).tolist()
        log(INFO, "  %-10s alpha=%s beta_mean=%s", scenario, alpha, beta)
    skipped = [r for r in summary.get("rounds_log", []) if not r["aggregated"]]
    if skipped:
        log(WARNING, "  rounds NOT aggregated: %s", ", ".join(f"{r['round']} ({r.get('why', '')})" for r in skipped))
    if run_dir is not None:
        log(INFO, "  run folder: %s", run_dir)
    if summary.get("status") == FAILED:
        log(ERROR, "  RUN FAILED: %s", summary["failure"])


def resume_state(run_dir: Path) -> ServerState:
    """The checkpoint of an earlier run folder; a clear error when there is none."""
    state_dir = run_dir / "server_state"
    if not (state_dir / "state.json").is_file():
        raise ValueError(f"resume={run_dir}: no server checkpoint at {state_dir}")
    return ServerState.load(state_dir)


def write_failed_summary(run_dir: Path, cfg: DictConfig, why: str) -> dict:
    """summary.json of a run that stopped before round 1."""
    summary = {"name": str(cfg.strategy.name), "rounds": int(cfg.num_rounds), "status": FAILED, "failure": why,
               "final_round": None, "final": [], "rounds_log": []}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def run(grid: Grid, cfg: DictConfig, run_dir: Path | None = None, *,
        check_data: bool = True) -> tuple[ScenarioStrategy, dict]:
    """Everything the ServerApp does, callable with any Grid (tests use an in-process one).

    With ``resume=<run folder>`` the run continues in that folder from the round
    after its last checkpoint, with the saved alpha, beta and personalized tensors.
    ``check_data``: every scenario's data are validated before round 1 (a simulation,
    where they are on this machine); the first bad file raises its DataValidationError
    after summary.json says the run failed. The returned summary's ``status`` is
    ``failed`` (and ``failure`` says why) when no round aggregated or a scenario never
    trained; the caller decides the exit code (the ServerApp raises RunFailed).
    """
    state = None
    if cfg.resume:
        run_dir = Path(str(cfg.resume)).expanduser()
        state = resume_state(run_dir)
        OmegaConf.save(cfg, run_dir / f"config.resume-{state.round}.yaml")
        log(INFO, "resuming %s after round %d", run_dir, state.round)
    else:
        run_dir = run_dir or report.make_run_dir(cfg)
        OmegaConf.save(cfg, run_dir / "config.yaml")
    if check_data:
        from pfms_client.data import DataValidationError

        try:
            check_scenarios(cfg)
        except DataValidationError as exc:
            write_failed_summary(run_dir, cfg, str(exc))
            log(ERROR, "pfms: %s", exc)
            raise
    strategy = build_strategy(cfg, run_dir, state)
    if state is not None and (run_dir / "metrics.csv").is_file():
        strategy.rows = report.read_csv(run_dir / "metrics.csv", up_to_round=state.round)
        report.write_csv(run_dir / "metrics.csv", strategy.rows)  # drop rows of an unfinished round
    if state is not None and (run_dir / "train_log.json").is_file():
        old = json.loads((run_dir / "train_log.json").read_text())
        strategy.train_log = [r for r in old if int(r["round"]) <= state.round]
    t0 = time.perf_counter()
    if state is not None and strategy.eval_due(state.round) and all(r["round"] != state.round for r in strategy.rows):
        log(INFO, "round %d was aggregated but not evaluated before the stop; evaluating it", state.round)
        strategy.evaluate_round(grid, state.round)
    remaining = int(cfg.num_rounds) - strategy.round_offset
    if remaining > 0:
        strategy.start(grid, ArrayRecord(), num_rounds=remaining, timeout=float(cfg.server.round_timeout))
    why = failure(strategy)
    summary = {"name": str(cfg.strategy.name), "status": FAILED if why else COMPLETED,
               **({"failure": why} if why else {}), **summarize(strategy, time.perf_counter() - t0),
               # Every aggregated round of the run folder; this process's train phases, aggregated or not.
               "aggregated_rounds": sorted({int(r["round"]) for r in strategy.train_log}),
               "rounds_log": strategy.round_results}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    report.write_json(run_dir / "train_log.json", strategy.train_log)
    if cfg.server.plot and (run_dir / "metrics.csv").exists():
        report.plot_auc(run_dir / "metrics.csv", run_dir / "auc.png")
    log_summary(summary, run_dir)
    return strategy, summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Every value of the run config is checked before the first message is sent."""
    try:
        cfg = load_run_config(str(context.run_config.get("overrides", "")))
    except ConfigError as exc:
        log(ERROR, "pfms: %s", exc)  # the one line to read in Flower's log; the traceback follows
        raise
    _, summary = run(grid, cfg, check_data=is_simulation(grid))
    if summary["status"] == FAILED:
        raise RunFailed(f"pfms: run failed: {summary['failure']}")


SIMULATION_GRID = ("flwr.superlink.grid.inmemory_grid", "InMemoryGrid")  # the Grid flwr-simulation gives


def is_simulation(grid: Grid) -> bool:
    """A simulation's nodes read their data on this machine: Flower's in-memory Grid.

    Looked up among the loaded modules (an InMemoryGrid's module is loaded; importing
    it takes seconds, which a deployed server need not spend)."""
    module = sys.modules.get(SIMULATION_GRID[0])
    return module is not None and isinstance(grid, getattr(module, SIMULATION_GRID[1]))
