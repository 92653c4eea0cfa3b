"""A real multi-scenario run at size: pfms-run on big generated scenarios, and its figures.

    python benchmarks/bench_scale.py --root DIR --rows-train 10000000 --rows-test 1000000 \
        --rounds 2 --local-steps 500 [-- extra Hydra overrides]

Runs ``pfms-run`` (its own SuperLink, Ray simulation, K ClientApps) on the synthetic
scenarios under ``--root`` (generated there by pfms-generate with the same sizes and
seed, or on first use), PF-MSMTrec by default, ``train.local_steps`` batches per round.
Then reads the run folder and prints one ``key=value`` per line:

- ``check_s``: pfms-run's data check before anything starts (prepares the stores
  on first use; a no-op when they are current);
- ``round_<r>_s``: wall seconds of round r, from sending the train messages to the
  last reply (summary.json's ``rounds_log``); under one message per round, a round's
  message also evaluates the model the round before ended with;
- ``final_eval_s``: the final evaluation message (after the last round);
- ``peak_anon_mib_<scenario>``: the most anonymous memory (RssAnon) one of that
  scenario's ClientApp messages held (the clients' ``mem.peak_anon_mib``), and
  ``peak_anon_mib_max`` over all;
- ``test_<scenario>_<task>_auc`` and ``test_mean_auc`` of the last evaluation;
- ``wall_s``: the whole command.

Not a CI test: at 10M rows per scenario it needs tens of GB of disk and page cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="folder of the generated scenarios (dataset.root)")
    p.add_argument("--rows-train", type=int, required=True)
    p.add_argument("--rows-test", type=int, required=True)
    p.add_argument("--scenarios", default="NL,ES,FR,US")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=500)
    p.add_argument("--home", default=None, help="PFMS_HOME for the run (default: benchmarks/.cache/scale-home)")
    p.add_argument("--name", default="scale")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides for pfms-run")
    args = p.parse_args(argv)

    home = Path(args.home or ROOT / "benchmarks" / ".cache" / "scale-home").resolve()
    run_dir = home / "runs" / args.name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    overrides = [f"dataset.root={args.root}", f"dataset.scenarios=[{args.scenarios}]",
                 f"dataset.generator.rows_train={args.rows_train}", f"dataset.generator.rows_test={args.rows_test}",
                 f"num_rounds={args.rounds}", f"train.local_steps={args.local_steps}", f"run_name={args.name}",
                 *args.overrides]
    cmd = [str(Path(sys.executable).parent / "pfms-run"), "--app", str(ROOT), *overrides]
    print("command=" + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "PFMS_HOME": str(home)}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    (home / f"{args.name}.log").write_text(out)
    if proc.returncode != 0:
        print(out[-3000:], file=sys.stderr)
        print(f"bench_scale: pfms-run exited {proc.returncode} (log: {home / (args.name + '.log')})", file=sys.stderr)
        return 1
    figures: dict[str, object] = {"wall_s": round(wall, 1)}
    if match := re.search(r"data of \d+ scenarios checked in ([\d.]+) s", out):
        figures["check_s"] = float(match.group(1))
    summary = json.loads((run_dir / "summary.json").read_text())
    for r in summary["rounds_log"]:
        figures[f"round_{r['round']}_s"] = r.get("seconds")
    peaks: dict[str, float] = {}
    final_eval = 0.0
    with (run_dir / "client_seconds.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row.get("peak_anon_mib"):
                peaks[row["scenario"]] = max(peaks.get(row["scenario"], 0.0), float(row["peak_anon_mib"]))
            if row["phase"] == "evaluate" and row.get("evaluate"):
                final_eval = max(final_eval, float(row["evaluate"]))
    figures["final_eval_client_s"] = round(final_eval, 1)
    for scenario in sorted(peaks):
        figures[f"peak_anon_mib_{scenario}"] = peaks[scenario]
    if peaks:
        figures["peak_anon_mib_max"] = max(peaks.values())
    aucs = [r for r in summary["final"] if r["split"] == "test"]
    for r in sorted(aucs, key=lambda r: (r["scenario"], r["task"])):
        figures[f"test_{r['scenario']}_{r['task']}_auc"] = round(float(r["auc"]), 4)
    if aucs:
        figures["test_mean_auc"] = round(sum(float(r["auc"]) for r in aucs) / len(aucs), 4)
    for key, value in figures.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
