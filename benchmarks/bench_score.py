"""Scoring throughput and memory of ``pfms-score`` on a big input.

    python benchmarks/bench_score.py --run $PFMS_HOME/runs/<run_name> [--scenario NL] [--rows 1000000]

1. Makes an input of ``--rows`` rows by repeating the scenario's test file (its rows,
   labels included, so the AUC/LogLoss pass is measured too), under ``--dir``
   (default benchmarks/.cache/score), reused when it exists.
2. Runs ``pfms-score`` on it in a child process (``--output`` .csv or .parquet by
   ``--format``), sampling the child's RssAnon every 50 ms (anonymous memory: the
   mapped input's page cache does not count).

Prints one key=value per line: ``rows``, ``score_s`` (the scoring itself, from
pfms-score's last line), ``score_rows_per_s``, ``process_s`` (the whole child, imports
and model load included), ``cpu_s`` (user + system of the child, all threads),
``peak_anon_mib`` and ``load_avg_1m`` before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from pfms_client.timing import rss_anon_kib  # RssAnon of the child process we sample

REPO = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.05


def make_input(test_file: Path, rows: int, dest: Path) -> Path:
    """``rows`` data rows: the test file's rows over and over (written once, streamed)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with test_file.open() as fh:
        header, body = fh.readline(), fh.read().splitlines(keepends=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("w") as out:
        out.write(header)
        left = rows
        while left > 0:
            out.writelines(body[:left])
            left -= min(left, len(body))
    tmp.replace(dest)
    return dest


def run_sampled(cmd: list[str]) -> tuple[str, str, float, int, float]:
    """(stdout, stderr, seconds, peak RssAnon KiB, CPU seconds) of ``cmd``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for r in readers:
        r.start()
    peak = 0
    while True:
        peak = max(peak, rss_anon_kib(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(SAMPLE_S)
    seconds = time.perf_counter() - t0
    for r in readers:
        r.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_score: pfms-score failed: {''.join(err)[-2000:]}")
    return "".join(out), "".join(err), seconds, peak, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder with checkpoints/<scenario>.pt")
    parser.add_argument("--scenario", default="NL")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--threads", type=int, default=None, help="pfms-score --threads (default: its own)")
    parser.add_argument("--dir", type=Path, default=REPO / "benchmarks" / ".cache" / "score")
    args = parser.parse_args()

    import torch

    from pfms_client.data.settings import DatasetSettings
    from pfms_client.scoring import SCORE_THREADS
    from pfms_client.trained_model import checkpoint_path

    cfg = torch.load(checkpoint_path(args.run, args.scenario), map_location="cpu", weights_only=False)["config"]
    test_file = DatasetSettings.from_config(cfg["dataset"]).test_path(args.scenario)
    rows_file = make_input(test_file, args.rows, args.dir / f"{args.scenario}-rows{args.rows}.csv")
    output = args.dir / f"scores.{args.format}"
    cmd = [sys.executable, "-m", "pfms_client.scoring", str(args.run), "--scenario", args.scenario,
           "--input", str(rows_file), "--output", str(output)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    load_before = os.getloadavg()[0]
    stdout, stderr, seconds, peak_kib, cpu_s = run_sampled(cmd)
    done = re.search(r"scored ([\d,]+) rows in ([\d.]+) s", stderr)
    assert done, stderr[-2000:]
    rows, score_s = int(done.group(1).replace(",", "")), float(done.group(2))
    figures = {
        "rows": rows,
        "input_mib": round(rows_file.stat().st_size / 2**20, 1),
        "format": args.format,
        "score_s": score_s,
        "score_rows_per_s": round(rows / score_s),
        "process_s": round(seconds, 2),
        "cpu_s": round(cpu_s, 2),
        "peak_anon_mib": round(peak_kib / 1024, 1),
        "torch_threads": args.threads if args.threads is not None else SCORE_THREADS,
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": os.getloadavg()[0],
    }
    for key, value in figures.items():
        print(f"{key}={value}")
    for line in stdout.splitlines():
        print(f"# {line}")


if __name__ == "__main__":
    main()
