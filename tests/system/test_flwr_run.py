"""One real `flwr run` through pfms-run: own SuperLink, Ray simulation, nothing left running."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                env = (entry / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmd or text in env:
                found.append(f"{entry.name}: {cmd[:120]}")
    return found


def _gone(text: str, grace: float = 30) -> list[str]:
    """The processes mentioning ``text`` once they had ``grace`` seconds to end: Ray's
    actors exit shortly after their raylet, later on a busy host (another xdist worker)."""
    deadline = time.monotonic() + grace
    while (left := _processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _pfms_run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run, except that a run past ``timeout`` gets SIGTERM first: pfms-run then
    stops the SuperLink it started (a SIGKILL would leave it running), and the test fails
    with the output so far."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"pfms-run still running after {timeout} s; stopped it (rc {proc.returncode}):\n"
                    f"{(out + err)[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_flwr_run_completes_and_writes_the_run_folder(tmp_path):
    home = tmp_path / "home"
    flwr_home = tmp_path / "flwr"
    # As a new user runs it: the venv is not activated, its bin is not on PATH.
    venv_bin = Path(sys.executable).parent.resolve()
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p).resolve() != venv_bin)
    env = {**os.environ, "PFMS_HOME": str(home), "PATH": path}
    cmd = [sys.executable, "-m", "pfms_server.deploy.local_run", "--app", str(REPO), "--flwr-home", str(flwr_home),
           "num_rounds=2", "run_name=flwr-run-test", "dataset.scenarios=[NL,ES]", "dataset.generator.rows_train=3000",
           "dataset.generator.rows_test=1000", "eval.splits=[test]"]
    proc = _pfms_run(cmd, env, timeout=420)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "run status finished:completed" in out
    assert "PF-MSMTrec summary: 2 rounds" in out  # the streamed ServerApp log

    run_dir = home / "runs" / "flwr-run-test"
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # Two scenarios: pfms-run's job (its SuperLink, the federation config, the log, the
    # status, the cleanup) is the same for any number; each further Ray actor costs ~6 s
    # of CPU to import torch. README command 1 runs the default four.
    assert len(rows) == 2 * 2 * 2  # rounds x scenarios x tasks (test split)
    assert {r["scenario"] for r in rows} == {"NL", "ES"}
    assert all(0.0 <= float(r["auc"]) <= 1.0 for r in rows)
    assert (run_dir / "auc.png").is_file()
    # each scenario's model, and beside it what scoring needs (pfms-score)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        [f"{s}.pt" for s in ("ES", "NL")] + [f"{s}.encoding" for s in ("ES", "NL")])
    assert json.loads((run_dir / "server_state" / "state.json").read_text())["round"] == 2
    # Flower installed nothing at run time, and every process we started is gone.
    assert "uv sync" not in out
    assert _gone(str(flwr_home)) == []


def test_pfms_run_rejects_unknown_config_keys(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pfms_server.deploy.local_run", "--app", str(REPO), "no_such_key=1"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PFMS_HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert "no_such_key" in proc.stderr


@pytest.mark.slow
def test_pfms_run_with_bad_data_fails_in_one_line_before_round_1(tmp_path):
    """The issue's case as a new user meets it: the real AliExpress layout, ES's test.csv missing."""
    import shutil

    from conftest import FIXTURES

    root = tmp_path / "AliExpress"
    for scenario in ("NL", "ES"):
        (root / f"AliExpress_{scenario}").mkdir(parents=True)
        for name in ("train", "test"):
            shutil.copy(FIXTURES / "aliexpress_sample" / f"rechub_US_{name}.csv",
                        root / f"AliExpress_{scenario}" / f"{name}.csv")
    (root / "AliExpress_ES" / "test.csv").unlink()
    flwr_home = tmp_path / "flwr"
    cmd = [sys.executable, "-m", "pfms_server.deploy.local_run", "--app", str(REPO), "--flwr-home", str(flwr_home),
           "dataset=aliexpress", f"dataset.root={root}", "dataset.scenarios=[NL,ES]", "num_rounds=2"]
    proc = _pfms_run(cmd, {**os.environ, "PFMS_HOME": str(tmp_path / "home")}, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [f"pfms-run: {root / 'AliExpress_ES' / 'test.csv'}: file not found"]
    assert "completed" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "home" / "runs").exists()  # no run started
    assert _gone(str(flwr_home)) == []


@pytest.mark.slow
def test_the_simulation_grid_is_where_flower_keeps_it():
    """server_app.is_simulation looks for this class among the loaded modules (importing it takes seconds)."""
    import importlib

    from flwr.superlink.grid import InMemoryGrid
    from pfms_server.server_app import SIMULATION_GRID

    assert getattr(importlib.import_module(SIMULATION_GRID[0]), SIMULATION_GRID[1]) is InMemoryGrid
