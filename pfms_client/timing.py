"""Where a ClientApp message's seconds go: process start, imports, config, data, work;
and the most anonymous memory it held.

Flower starts a fresh ClientApp process for every message, so the cost of
starting Python and importing is paid per message. ``process_age_s`` reads this
process's start time from ``/proc/self/stat`` (no psutil), so a module can say
how long the process had been alive when it began to import.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
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


ANON_SAMPLE_S = 0.05  # how often AnonPeak reads /proc/self/status


def rss_anon_kib(pid: int | str = "self") -> int:
    """A process's resident anonymous memory (RssAnon; this one by default); 0 where /proc
    is not available or the process is gone. Pages of a mapped store are file-backed: the
    page cache holds them, not this figure."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class AnonPeak:
    """The peak of RssAnon while this object lives, sampled by a daemon thread (the kernel
    keeps a peak only of the whole RSS, VmHWM, which counts mapped files too). The thread
    holds only a weak reference: it ends with ``stop`` or when the object is dropped, so
    a long-lived process (a Ray worker in simulation) does not collect samplers."""

    def __init__(self, interval: float = ANON_SAMPLE_S) -> None:
        self.peak_kib = rss_anon_kib()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=AnonPeak._run, args=(weakref.ref(self), self._stop, interval),
                                       daemon=True, name="pfms-anon-peak")
        self.thread.start()

    @staticmethod
    def _run(ref: weakref.ref, stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval):
            me = ref()
            if me is None:
                return
            me.peak_kib = max(me.peak_kib, rss_anon_kib())
            del me

    def mib(self) -> float:
        self.peak_kib = max(self.peak_kib, rss_anon_kib())
        return self.peak_kib / 1024

    def stop(self) -> None:
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


class Stopwatch:
    """Named wall-clock durations of one message, reported as ``time.<name>`` metrics, and
    the message's peak anonymous memory as ``mem.peak_anon_mib``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.memory = AnonPeak()

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {f"time.{k}": round(v, 4) for k, v in self.seconds.items()}
        out["mem.peak_anon_mib"] = round(self.memory.mib(), 1)
        return out
