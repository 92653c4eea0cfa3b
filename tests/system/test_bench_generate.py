"""benchmarks/bench_generate.py runs pfms-generate in a subprocess and prints its key=value lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_generate_prints_its_keys(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--rows", "3000",
         "--test-rows", "500", "--dir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    values = dict(line.split("=", 1) for line in out.stdout.split())
    assert set(values) == {
        "rows", "test_rows", "generate_s", "generate_rows_per_s", "generate_peak_anon_mib", "bytes"
    }  # fmt: skip
    assert values["rows"] == "3000" and values["test_rows"] == "500"
    files = (tmp_path / "NL" / "train.csv", tmp_path / "NL" / "test.csv")
    assert int(values["bytes"]) == sum(f.stat().st_size for f in files)
    assert float(values["generate_peak_anon_mib"]) > 0
