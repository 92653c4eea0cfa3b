"""Where a ClientApp message's seconds go: process start, imports, config, data, work.

Flower starts a fresh ClientApp process for every message, so the cost of
starting Python and importing is paid per message. ``process_age_s`` reads this
process's start time from ``/proc/self/stat`` (no psutil), so a module can say
how long the process had been alive when it began to import.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from collections.abc import Iterator


def process_age_s() -> float:
    """Seconds since this process started (NaN where /proc is not available)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime in ticks
        return max(0.0, uptime - start)
    except (OSError, IndexError, ValueError):
        return float("nan")


class Stopwatch:
    """Named wall-clock durations of one message, reported as ``time.<name>`` metrics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time.{k}": round(v, 4) for k, v in self.seconds.items()}
