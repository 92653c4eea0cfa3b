"""A throttled progress line on stderr while a generator writes a big scenario.

Nothing is printed for a scenario made in under ``_EVERY_S`` seconds (the
default data sets), so only big runs report: rows done, rows/s and an ETA, at
most once every ``_EVERY_S`` seconds, and a last line when done.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_EVERY_S = 5.0


class Progress:
    """``advance(rows)`` after each block; ``done()`` at the end."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done_rows = label, total, 0
        self.stream = stream
        self.start = self.last = time.monotonic()
        self.printed, self.printed_rows = False, 0

    def advance(self, rows: int) -> None:
        self.done_rows += rows
        now = time.monotonic()
        if now - self.last >= _EVERY_S:
            self.last = now
            self._line(now)

    def done(self) -> None:
        if self.printed and self.printed_rows != self.done_rows:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done_rows / elapsed
        left = (self.total - self.done_rows) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done_rows / self.total if self.total else 100.0
        eta = f"ETA {left:.0f} s" if self.done_rows < self.total else f"done in {elapsed:.1f} s"
        print(
            f"pfms-generate: {self.label} {self.done_rows:,}/{self.total:,} rows ({pct:.0f}%), "
            f"{rate:,.0f} rows/s, {eta}",
            file=self.stream or sys.stderr,
            flush=True,
        )
        self.printed, self.printed_rows = True, self.done_rows
