"""Speed and peak anonymous memory of ``pfms-generate`` on one AliExpress-schema scenario.

Runs ``pfms-generate`` in a subprocess for one scenario of ``--rows`` train and
``--test-rows`` test rows, samples the child's RssAnon (anonymous resident memory,
/proc/PID/status: the page cache of the written files does not count) every 50 ms,
and prints one key=value per line: rows, test_rows, generate_s, generate_rows_per_s
(train + test rows per second), generate_peak_anon_mib, bytes (of the CSVs).

    python benchmarks/bench_generate.py --rows 1000000 [--test-rows 100000] [--dir D] [--keep]

The scenario goes to ``--dir`` (default: a temp folder, deleted afterwards); with
``--dir``, an existing scenario is regenerated (the folder is replaced atomically)
and kept. ``--module`` times another generator entry point taking the same options
(e.g. an older checkout's, to compare).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SAMPLE_S = 0.05


def rss_anon_kib(pid: int) -> int | None:
    """RssAnon of ``pid`` in KiB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_sampled(cmd: list[str]) -> tuple[float, int, int]:
    """Run ``cmd``; returns (wall seconds, peak RssAnon KiB, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        kib = rss_anon_kib(proc.pid)
        if kib is not None:
            peak = max(peak, kib)
        time.sleep(_SAMPLE_S)
    return time.perf_counter() - t0, peak, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="train rows")
    parser.add_argument("--test-rows", type=int, default=None, help="test rows (default rows / 10)")
    parser.add_argument("--dir", type=Path, default=None, help="output folder (kept)")
    parser.add_argument("--scenario", default="NL")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--module", default="pfms_client.data.synthetic.cli")
    args = parser.parse_args()
    test_rows = args.test_rows if args.test_rows is not None else max(1, args.rows // 10)
    out = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="bench-generate-"))
    cmd = [
        sys.executable, "-m", args.module, "--out", str(out), "--scenarios", args.scenario,
        "--rows-train", str(args.rows), "--rows-test", str(test_rows), "--seed", str(args.seed),
    ]  # fmt: skip
    try:
        seconds, peak_kib, code = run_sampled(cmd)
        if code != 0:
            sys.exit(f"bench_generate: {' '.join(cmd)} exited with {code}")
        size = sum(p.stat().st_size for p in (out / args.scenario).glob("*.csv"))
    finally:
        if args.dir is None:
            shutil.rmtree(out, ignore_errors=True)
    total = args.rows + test_rows
    print(f"rows={args.rows}")
    print(f"test_rows={test_rows}")
    print(f"generate_s={seconds:.2f}")
    print(f"generate_rows_per_s={total / seconds:.0f}")
    print(f"generate_peak_anon_mib={peak_kib / 1024:.1f}")
    print(f"bytes={size}")


if __name__ == "__main__":
    main()
