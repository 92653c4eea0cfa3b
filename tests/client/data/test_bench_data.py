"""benchmarks/bench_data.py at a small size: every key printed, with sane values (not the speed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

KEYS = ("rows", "prepare_s", "prepare_rows_per_s", "prepare_peak_anon_mib", "prepare_cpu_s", "prepare_rows_per_cpu_s",
        "open_s", "train_peak_anon_mib",
        "stream_samples_per_s", "memory_samples_per_s", "stream_vs_memory_ratio")


def test_bench_data_prints_every_key(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_data.py"), "--rows", "5000", "--test-rows", "1000",
         "--batches", "4", "--repeats", "1", "--dir", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    values = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert set(KEYS) <= set(values)
    assert int(values["rows"]) == 5000 and values["device"] == "cpu"
    for key in KEYS[1:]:
        assert float(values[key]) > 0, key
    rate = float(values["prepare_rows_per_s"])  # prepare_s is printed to 1 ms
    assert float(values["prepare_s"]) * rate == pytest.approx(6000, abs=0.0005 * rate + 60)
    assert float(values["prepare_cpu_s"]) * float(values["prepare_rows_per_cpu_s"]) == pytest.approx(6000, rel=0.01)
    assert 10 < float(values["prepare_peak_anon_mib"]) < 4096 and 10 < float(values["train_peak_anon_mib"]) < 4096
    assert 0.1 < float(values["stream_vs_memory_ratio"]) < 10
    assert (tmp_path / "bench" / "NL" / "train.csv").is_file()  # generated there, reused by a second run
