"""pfms-compare: run a set of strategies ("arms") x seeds in-process and write one report.

An arms file (conf/compare/<name>.yaml) names each arm with the Hydra overrides that
make it from the base config. Every (arm, seed) is one run of the real ServerApp and
ClientApp code through InProcessGrid, one after the other, each in
``<out>/runs/<arm>-seed<seed>``. Every arm's config is composed before the first run,
so a typo fails in seconds, not an hour in. A run folder whose summary.json says it
completed is skipped, so an interrupted comparison continues where it stopped.

A run that fails (its data fail validation, no round aggregated, a scenario never
trained) is marked failed in its summary.json, reports no AUC, and the others go
on; the report lists it (FAILED and why), the command exits 1, and running it again
redoes only the failed runs.

Writes to ``<out>``: results.csv / results.md (test AUC and LogLoss per scenario x task,
mean ± std over seeds; each arm's difference from the first arm, paired by seed, overall and per
scenario), paired.csv, per_scenario.csv (arm x scenario x task: test AUC over seeds and the paired
difference from the first arm), upload_bytes.csv, timing.csv, failed.csv (arm, seed, why),
auc_by_round.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pfms_client.config import conf_dir

from . import compare_report as cr
from .. import report
from ..config_check import CENTRALIZED, load_run_config

ARMS_DIR = "compare"  # arms files live in conf/compare/
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SPEC_KEYS = {"arms", "seeds", "overrides"}
TIMING_FILE = "compare.json"  # written into each run folder: arm, seed, overrides, wall seconds


class CompareError(ValueError):
    """Bad input to pfms-compare (arms file, arm name, seed list, override), named in the message."""


@dataclass(frozen=True)
class ArmsSpec:
    path: Path
    arms: dict[str, list[str]]
    seeds: list[int]
    overrides: list[str]


@dataclass
class Run:
    arm: str
    seed: int
    overrides: list[str]
    run_dir: Path
    cfg: DictConfig

    @property
    def label(self) -> str:
        return f"{self.arm} seed={self.seed}"

    @property
    def finished(self) -> bool:
        """A completed run folder (skipped when the comparison runs again); a failed one is redone."""
        summary = self.summary()
        return summary is not None and failure_of(summary) is None

    def summary(self) -> dict | None:
        path = self.run_dir / "summary.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except ValueError:  # a summary cut short: the run is redone
            return None


def failure_of(summary: dict) -> str | None:
    """Why a run failed (its summary's status is ``failed``), or None for a completed run."""
    if summary.get("status") == "failed":
        return str(summary.get("failure") or "failed (no reason recorded)")
    return None


# --- the arms file ---------------------------------------------------------------------
def available_arms_files() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / ARMS_DIR).glob("*.yaml"))


def arms_path(name: str) -> Path:
    """conf/compare/<name>.yaml, or ``name`` itself when it is a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise CompareError(f"arms file {name!r} does not exist")
        return path
    path = conf_dir() / ARMS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise CompareError(f"unknown arms file {name!r}: expected {path}; available: "
                           f"{', '.join(available_arms_files()) or '(none)'}")
    return path


def _str_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float, bool)) for v in value):
        raise CompareError(f"{where} must be a list of Hydra overrides, got {value!r}")
    return [str(v) for v in value]


def load_arms(name: str) -> ArmsSpec:
    path = arms_path(name)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(raw, dict):
        raise CompareError(f"{path}: expected a mapping with keys {sorted(SPEC_KEYS)}")
    if unknown := set(raw) - SPEC_KEYS:
        raise CompareError(f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(SPEC_KEYS)}")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise CompareError(f"{path}: 'arms' must map each arm name to a list of overrides")
    arms = {}
    for arm, ovr in arms_raw.items():
        if not NAME_RE.fullmatch(str(arm)):
            raise CompareError(f"{path}: arm name {arm!r} must match {NAME_RE.pattern} (it names a folder)")
        arms[str(arm)] = _str_list(ovr, f"{path}: arm {arm!r}")
    return ArmsSpec(path, arms, parse_seeds(raw.get("seeds", [1]), str(path)), _str_list(raw.get("overrides"),
                                                                                        f"{path}: overrides"))


def parse_seeds(value: object, where: str = "--seeds") -> list[int]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        seeds = [int(str(s).strip()) for s in items]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise CompareError(f"{where}: seeds must be integers, got {value!r}") from exc
    if not seeds or len(set(seeds)) != len(seeds):
        raise CompareError(f"{where}: need at least one seed and no repeats, got {value!r}")
    return seeds


def select_arms(arms: dict[str, list[str]], only: str | None, where: Path) -> dict[str, list[str]]:
    if not only:
        return dict(arms)
    names = [n.strip() for n in only.split(",") if n.strip()]
    if unknown := [n for n in names if n not in arms]:
        raise CompareError(f"unknown arm(s) {', '.join(map(repr, unknown))} in --only; {where} has: {', '.join(arms)}")
    return {n: arms[n] for n in dict.fromkeys(names)}


# --- planning: compose every config before running anything ---------------------------
def hydra_value(value: str) -> str:
    """A string as a Hydra override value (quoted when it has characters the grammar would parse)."""
    if re.fullmatch(r"[\w./~+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_overrides(common: Sequence[str], arm_overrides: Sequence[str], arm: str, seed: int, out: Path) -> list[str]:
    return [*common, *arm_overrides, f"seed={seed}", f"run_name={arm}-seed{seed}",
            f"paths.runs={hydra_value(str(out / 'runs'))}", "server.plot=false"]


def compose(overrides: Sequence[str], what: str) -> DictConfig:
    """load_run_config: every value checked (client and server rules, the aggregation rule
    built; ``centralized`` allowed); a bad one fails here, naming ``what`` and the key."""
    try:
        return load_run_config(list(overrides), flower=False)
    except ValueError as exc:  # ConfigError
        raise CompareError(f"{what}: {exc}") from exc


def plan(arms: dict[str, list[str]], seeds: Sequence[int], common: Sequence[str], out: Path) -> list[Run]:
    """One Run per (seed, arm), seed-major, so a stopped comparison has every arm of its first seeds."""
    runs = []
    for seed in seeds:
        for arm, ovr in arms.items():
            overrides = run_overrides(common, ovr, arm, seed, out)
            cfg = compose(overrides, f"arm {arm!r} (overrides {ovr}, seed {seed})")
            runs.append(Run(arm, seed, overrides, out / "runs" / f"{arm}-seed{seed}", cfg))
    return runs


def _flat(d: object, prefix: str = "") -> dict[str, object]:
    if isinstance(d, dict):
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def check_finished(run: Run) -> None:
    """A finished run folder must hold the config this comparison would run now."""
    saved_path = run.run_dir / "config.yaml"
    if not run.finished or not saved_path.is_file():
        return
    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_path)))
    now = _flat(OmegaConf.to_container(run.cfg))
    diff = [f"{k}: {saved.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        raise CompareError(f"{run.run_dir} is a finished run with a different config ({'; '.join(diff[:5])}"
                           f"{'; ...' if len(diff) > 5 else ''}); use another --out or delete that folder")


# --- running ---------------------------------------------------------------------------
@contextmanager
def flower_log(path: Path, quiet: bool) -> Iterator[None]:
    """Flower's log of one run goes to ``path``; the console shows only warnings when quiet."""
    logger = logging.getLogger("flwr")
    saved = [(h, h.level) for h in logger.handlers]
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(message)s"))
    if quiet:
        for h, level in saved:
            h.setLevel(max(level, logging.WARNING))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        for h, level in saved:
            h.setLevel(level)


def prepare_data(runs: Sequence[Run]) -> None:
    """Generate (or convert) each dataset once before any run, so no run's wall time includes it.

    A scenario that fails validation is reported here in one line and left to the runs
    that use it: each of them fails before round 1, and the others go on."""
    from pfms_client.data import DataValidationError, load_scenario

    seen = set()
    for run in runs:
        ds = run.cfg.dataset
        if ds.get("generator") is None and ds.get("source") is None:
            continue  # files on disk: nothing to create
        # What the files depend on (not the split seed, which follows the run's seed).
        c = OmegaConf.to_container(ds)
        key = json.dumps([c.get(k) for k in ("root", "generator", "source", "scenarios")], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        t0 = time.perf_counter()
        try:
            for scenario in ds.scenarios:
                load_scenario(ds, str(scenario))
        except DataValidationError as exc:
            print(f"data NOT ready: {ds.name}: {exc}", flush=True)
            continue
        print(f"data ready: {ds.name} ({len(ds.scenarios)} scenarios) in {time.perf_counter() - t0:.1f} s", flush=True)


def execute(run: Run, quiet: bool) -> tuple[float, dict]:
    """One in-process run; returns its wall seconds and summary.

    Data that fail validation end the run before round 1 with a summary whose status
    is ``failed`` (the DataValidationError's line is its ``failure``), as does a run
    in which no round aggregated or a scenario never trained."""
    from pfms_client.client_app import app as client_app
    from pfms_client.data import DataValidationError

    from .inprocess import InProcessGrid
    from ..server_app import run as server_run, write_failed_summary

    if run.run_dir.exists():  # an unfinished folder from an interrupted comparison: start it again
        shutil.rmtree(run.run_dir)
    run.run_dir.mkdir(parents=True)
    k = len(run.cfg.dataset.scenarios)
    nodes = [{"partition-id": i, "num-partitions": k} for i in range(k)]
    with flower_log(run.run_dir / "log.txt", quiet):
        t0 = time.perf_counter()
        try:
            if str(run.cfg.strategy.algorithm) == CENTRALIZED:  # pooled rows, one model: nothing to federate
                from .centralized import run_centralized
                from ..data_check import check_scenarios

                check_scenarios(run.cfg)  # the same one-line error as a federated run's
                _, summary = run_centralized(run.cfg, run.run_dir)
            else:
                grid = InProcessGrid(client_app, nodes, {"overrides": shlex.join(run.overrides)})
                _, summary = server_run(grid, run.cfg, run.run_dir)
        except DataValidationError as exc:
            summary = write_failed_summary(run.run_dir, run.cfg, str(exc))
        seconds = time.perf_counter() - t0
    (run.run_dir / TIMING_FILE).write_text(json.dumps(
        {"arm": run.arm, "seed": run.seed, "overrides": run.overrides, "wall_seconds": seconds}, indent=1))
    return seconds, summary


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def run_all(runs: Sequence[Run], quiet: bool) -> list[tuple[Run, str]]:
    """Every run not finished earlier, one after the other; returns the failed ones and why."""
    failed: list[tuple[Run, str]] = []
    done_times: list[float] = []
    todo = sum(not r.finished for r in runs)
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.label}"
        if run.finished:
            print(f"{head} ... skipped (finished earlier: {run.run_dir / 'summary.json'})", flush=True)
            continue
        print(f"{head} ...", end=" " if quiet else "\n", flush=True)
        try:
            seconds, summary = execute(run, quiet)
        except Exception:
            print("failed", flush=True)
            traceback.print_exc()
            raise
        done_times.append(seconds)
        left = todo - len(done_times)
        eta = f", ETA {_duration(left * sum(done_times) / len(done_times))}" if left else ""
        prefix = "" if quiet else f"{head} "  # quiet: completes the line "[i/n] arm seed=s ..."
        if (why := failure_of(summary)) is not None:
            failed.append((run, why))
            print(f"{prefix}FAILED in {seconds:.1f} s: {why}{eta}", flush=True)
            continue
        auc = summary.get("test_mean_auc", float("nan"))
        print(f"{prefix}done in {seconds:.1f} s, test mean AUC {auc:.4f}{eta}", flush=True)
    return failed


# --- collecting and reporting ----------------------------------------------------------
def collect(runs: Sequence[Run]) -> tuple[list[dict], list[dict], list[dict], dict[str, list[float]]]:
    """Metrics, upload and timing rows of every completed run folder, and each arm's best-val-round
    test AUCs. A failed run reports nothing here (no AUC): ``failed_runs`` lists it."""
    metrics, upload, timing, best_val = [], [], [], {}
    for run in runs:
        summary = run.summary()
        if summary is None or failure_of(summary) is not None:
            continue
        for r in report.read_csv(run.run_dir / "metrics.csv"):
            metrics.append({"arm": run.arm, "seed": run.seed, **r})
        if "best_val_round_test_mean_auc" in summary:
            best_val.setdefault(run.arm, []).append(float(summary["best_val_round_test_mean_auc"]))
        log_path = run.run_dir / "train_log.json"
        for entry in json.loads(log_path.read_text()) if log_path.is_file() else []:
            upload.append({"arm": run.arm, "seed": run.seed, "round": int(entry["round"]),
                           "scenario": entry["scenario"], "bytes": entry.get("upload_bytes")})
        timing_path = run.run_dir / TIMING_FILE
        seconds = (json.loads(timing_path.read_text())["wall_seconds"] if timing_path.is_file()
                   else summary.get("seconds"))
        timing.append({"arm": run.arm, "seed": run.seed, "seconds": round(float(seconds), 2)})
    return metrics, upload, timing, best_val


def _config_order(runs: Sequence[Run]) -> dict[tuple[str, str], int]:
    cells: list[tuple[str, str]] = []
    for run in runs:
        for s in run.cfg.dataset.scenarios:
            for t in run.cfg.dataset.schema.tasks:
                cells.append((str(s), str(t.name)))
    return {c: i for i, c in enumerate(dict.fromkeys(cells))}


def failed_runs(runs: Sequence[Run]) -> list[dict]:
    """arm, seed and why of every run whose summary says it failed (or that has no summary)."""
    out = []
    for run in runs:
        summary = run.summary()
        why = "no summary.json (the run did not finish)" if summary is None else failure_of(summary)
        if why is not None:
            out.append({"arm": run.arm, "seed": run.seed, "why": why})
    return out


def write_report(out: Path, runs: Sequence[Run], arms: dict[str, list[str]], seeds: Sequence[int],
                 common: Sequence[str]) -> list[dict]:
    metrics, upload, timing, best_val = collect(runs)
    failed = failed_runs(runs)
    order = _config_order(runs)
    metrics.sort(key=lambda r: order.get((r["scenario"], r["task"]), len(order)))
    final = cr.final_rows(metrics, "test")
    results = cr.aggregate(final, list(arms))
    if not results and not failed:
        raise CompareError("no test metrics in the run folders: keep 'test' in eval.splits")
    cr.write_csv(out / "results.csv", results, cr.RESULT_FIELDS)
    cr.write_csv(out / "upload_bytes.csv", upload, cr.UPLOAD_FIELDS)
    cr.write_csv(out / "timing.csv", timing, cr.TIMING_FIELDS)
    paired = cr.paired_differences(final, next(iter(arms)))
    cr.write_csv(out / "paired.csv", paired, cr.PAIRED_FIELDS)
    scenario_rows = cr.per_scenario(final, next(iter(arms)), list(arms))
    cr.write_csv(out / "per_scenario.csv", scenario_rows, cr.PER_SCENARIO_FIELDS)
    best = {a: cr.spread(v) for a, v in best_val.items()} if len(best_val) == len(arms) else None
    (out / "results.md").write_text(cr.markdown(results, timing, upload, seeds=seeds, arm_overrides=arms,
                                                common=common, best_val=best, paired=paired, failed=failed,
                                                scenario_rows=scenario_rows))
    cr.write_csv(out / "failed.csv", failed, cr.FAILED_FIELDS)
    if by_round := cr.mean_by_round(metrics, "test"):  # none when every run failed
        cr.plot_mean_auc(by_round, out / "auc_by_round.png")
    return results


# --- command line ----------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pfms-compare",
        description="Run strategies (arms) x seeds in-process and write a comparison table and plot. "
                    "Running the same command again skips finished runs.",
        epilog="example: pfms-compare --arms baselines --only pfmsmtrec,fedavg --seeds 1,2 num_rounds=5")
    p.add_argument("--arms", default="default",
                   help="arms file: a name in conf/compare/ (default, baselines, smoke) or a path to a YAML file")
    p.add_argument("--only", help="comma-separated subset of the file's arms")
    p.add_argument("--seeds", help="comma-separated seeds (default: the arms file's seeds)")
    p.add_argument("--out", help="output folder (default: <paths.home>/compare/<timestamp>-<arms>); "
                                 "give an existing one to continue an interrupted comparison")
    p.add_argument("--dry-run", action="store_true", help="compose every run's config, print the plan, run nothing")
    p.add_argument("--verbose", action="store_true", help="show Flower's log (always written to <run>/log.txt)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every arm, e.g. num_rounds=5 dataset=tenrec")
    return p.parse_intermixed_args(argv)  # overrides may come before or after the options


def setup(args: argparse.Namespace) -> tuple[Path, list[Run], dict[str, list[str]], list[int], list[str]]:
    """Everything that can fail on bad input, before anything runs."""
    spec = load_arms(args.arms)
    arms = select_arms(spec.arms, args.only, spec.path)
    seeds = parse_seeds(args.seeds) if args.seeds else spec.seeds
    common = [*spec.overrides, *args.overrides]
    base = compose(common, f"overrides for every arm {common}")
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}-{spec.path.stem}"
    out = Path(args.out or Path(str(base.paths.home)) / "compare" / stamp).expanduser().resolve()
    runs = plan(arms, seeds, common, out)
    for run in runs:
        check_finished(run)
    return out, runs, arms, seeds, common


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out, runs, arms, seeds, common = setup(args)
    except CompareError as exc:
        print(f"pfms-compare: {exc}", file=sys.stderr)
        return 2
    finished = sum(r.finished for r in runs)
    print(f"{len(arms)} arms x {len(seeds)} seeds = {len(runs)} runs ({finished} finished earlier) -> {out}",
          flush=True)
    if args.dry_run:
        for i, run in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {run.label}: {' '.join(run.overrides)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        prepare_data([r for r in runs if not r.finished])
        run_all(runs, quiet=not args.verbose)
    except Exception as exc:  # the traceback is printed; the finished runs stay for the next attempt
        print(f"pfms-compare: stopped ({type(exc).__name__}: {exc}); run the same command with --out {out} "
              "to continue", file=sys.stderr)
        return 1
    results = write_report(out, runs, arms, seeds, common)
    print(f"all {len(runs)} runs in {_duration(time.perf_counter() - t0)}; test mean AUC (± std over seeds):")
    for r in results:
        if r["scenario"] == cr.MEAN:
            print(f"  {r['arm']:<22} {cr.fmt_spread(r['auc_mean'], r['auc_std'])}")
    plot = ", auc_by_round.png" if (out / "auc_by_round.png").is_file() else ""
    print(f"wrote {out}/results.md, results.csv, paired.csv, per_scenario.csv, upload_bytes.csv, timing.csv, "
          f"failed.csv{plot}")
    if failed := failed_runs(runs):  # earlier attempts' failures were redone above: these are this attempt's
        for f in failed:
            print(f"  FAILED {f['arm']} seed={f['seed']}: {f['why']}", file=sys.stderr)
        print(f"pfms-compare: {len(failed)} of {len(runs)} runs FAILED (no AUC reported for them; see "
              f"{out}/results.md); run the same command to redo only those", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
