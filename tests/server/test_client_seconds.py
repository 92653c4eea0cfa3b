"""client_seconds.csv: where each client message's seconds went, and its peak memory."""

from __future__ import annotations

import time

from pfms_client.timing import Stopwatch
from pfms_server.strategy import client_seconds


def test_stopwatch_reports_seconds_and_peak_memory_and_the_server_keeps_both():
    watch = Stopwatch()
    with watch.time("train"):
        time.sleep(0.02)
    metrics = watch.metrics()
    assert metrics["time.train"] >= 0.02 and metrics["mem.peak_anon_mib"] > 1
    row = client_seconds(3, "NL", "train", {**metrics, "threads": 1})
    assert row["train"] == metrics["time.train"] and row["peak_anon_mib"] == metrics["mem.peak_anon_mib"]
    assert row["threads"] == 1 and row["evaluate"] == ""
    assert client_seconds(3, "NL", "train", {"mem.peak_anon_mib": float("nan")})["peak_anon_mib"] == ""
