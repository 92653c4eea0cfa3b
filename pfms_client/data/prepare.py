"""``pfms-prepare``: validate and convert a dataset's scenarios into their prepared stores.

Takes the same Hydra overrides as ``pfms-run`` (``pfms-prepare dataset=aliexpress
dataset.root=/data/AliExpress``) and prepares every scenario of ``dataset.scenarios``
(or those named with ``--scenarios``) ahead of a run; a run would otherwise prepare
each on first use. A store that is up to date is reused in milliseconds. Progress
goes to stderr: rows read, rows/s and an ETA. Exit 0 when every scenario is
prepared, 2 on bad config or data (one line naming key, or file, line and column).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

PRINT_EVERY_S = 0.5  # a progress line at most this often (a terminal); 10 x this to a file


class ProgressLine:
    """``NL read train.csv: 1,200,000 / ~2,000,000 rows, 310,000 rows/s, ETA 3 s``, throttled."""

    def __init__(self, scenario: str, stream: TextIO = sys.stderr, every_s: float = PRINT_EVERY_S) -> None:
        self.scenario, self.stream = scenario, stream
        self.tty = stream.isatty()
        self.every = every_s if self.tty else 10 * every_s
        self.phase, self.t_phase, self.t_last = "", time.monotonic(), 0.0

    def __call__(self, phase: str, rows: int, expected: int | None) -> None:
        now = time.monotonic()
        if phase != self.phase:
            self.phase, self.t_phase = phase, now
        if now - self.t_last < self.every:
            return
        self.t_last = now
        rate = rows / max(now - self.t_phase, 1e-9)
        text = f"{self.scenario} {phase}: {rows:,}"
        if expected:
            left = max(expected - rows, 0) / rate if rate > 0 else float("nan")
            text += f" / ~{expected:,} rows, {rate:,.0f} rows/s, ETA {left:.0f} s"
        else:
            text += f" rows, {rate:,.0f} rows/s"
        self.stream.write(("\r" + text + "\033[K") if self.tty else text + "\n")
        self.stream.flush()

    def done(self, text: str) -> None:
        self.stream.write(("\r" + text + "\033[K\n") if self.tty else text + "\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pfms-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=aliexpress dataset.root=/data")
    parser.add_argument("--scenarios", nargs="+", default=None, help="only these scenarios (default: all)")
    args = parser.parse_args(argv)
    from ..config import load_config
    from . import prepare_scenario
    from .store import read_manifest

    try:
        cfg = load_config(args.overrides)
        wanted = args.scenarios or list(cfg.dataset.scenarios)
        for scenario in wanted:
            t0 = time.perf_counter()
            line = ProgressLine(str(scenario))
            folder = prepare_scenario(cfg.dataset, str(scenario), progress=line)
            rows = read_manifest(folder)["rows"]
            line.done(f"{scenario}: {rows['train']:,} train / {rows['val']:,} val / {rows['test']:,} test rows "
                      f"in {folder} ({time.perf_counter() - t0:.1f} s)")
    except ValueError as exc:  # ConfigError, DataValidationError
        print(f"pfms-prepare: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
