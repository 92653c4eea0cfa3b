"""Real network rounds: pfms-server + 4 pfms-client processes on loopback, TLS and node auth on.

Every process runs as a user would start it (the CLIs, the venv's bin off PATH),
talks over Flower's Fleet API on HTTPS, and is stopped by pid at the end.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import run_inprocess
from pfms_client.data.generator import generate
from pfms_server.certs import write_all
from pfms_server.procs import free_port, reachable, stop_tree

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ["NL", "ES", "FR", "US"]
DATA = ["dataset.generator.rows_train=3000", "dataset.generator.rows_test=1000"]
RUN = ["num_rounds=2", "eval.splits=[test]", "train.num_threads=1", *DATA]


def _env(**extra: str) -> dict[str, str]:
    venv_bin = Path(sys.executable).parent.resolve()
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != venv_bin)
    return {**os.environ, "PATH": path, **extra}


def _flwr(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    data, certs, flwr_home = root / "data", root / "certs", root / "flwr"
    generate(data, SCENARIOS, rows_train=3000, rows_test=1000, seed=2024)
    write_all(certs, supernodes=[*SCENARIOS, "intruder"])
    port = free_port()
    env = _env(FLWR_HOME=str(flwr_home), PFMS_HOME=str(root / "home"))
    procs: list[subprocess.Popen] = []
    logs = root / "logs"
    logs.mkdir()

    def start(name: str, *args: str) -> subprocess.Popen:
        fh = (logs / f"{name}.log").open("w")
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start("server", "-m", "pfms_server.server_cli", "--host", "127.0.0.1", "--port", str(port),
              "--certs-dir", str(certs), "--enable-supernode-auth", "--flwr-home", str(flwr_home))
        assert reachable("127.0.0.1", port, 60), (logs / "server.log").read_text()
        flwr_home.mkdir(exist_ok=True)
        (flwr_home / "config.toml").write_text(
            '[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
            f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n')
        for s in SCENARIOS:  # enrol the four scenario nodes, not the intruder
            reg = _flwr("supernode", "register", str(certs / "supernodes" / f"{s}.pub"), "deploy", env=env)
            assert reg.returncode == 0, reg.stdout + reg.stderr
        def start_client(s: str, log_name: str | None = None) -> subprocess.Popen:
            scenario = "NL" if s == "intruder" else s
            return start(log_name or s, "-m", "pfms_client.client_cli", "--scenario", scenario, "--data", str(data),
                         "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(certs / "ca.crt"),
                         "--auth-key", str(certs / "supernodes" / f"{s}.key"),
                         "--state-dir", str(root / "state" / s), "--flwr-home", str(root / f"flwr-{s}"))

        clients = {s: start_client(s) for s in [*SCENARIOS, "intruder"]}
        yield {"root": root, "env": env, "logs": logs, "clients": clients, "port": port, "start_client": start_client}
    finally:
        for proc in reversed(procs):
            stop_tree(proc)


@pytest.mark.slow
def test_tls_auth_deployment_matches_inprocess_and_refuses_unenrolled_node(deployment, tmp_path):
    env, root = deployment["env"], deployment["root"]
    overrides = " ".join([*RUN, "run_name=deployed"])
    t0 = time.perf_counter()
    run = _flwr("run", str(REPO), "deploy", "--stream", "--run-config", f"overrides='{overrides}'",
                env=env, timeout=900)
    seconds = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    status = _flwr("ls", "deploy", "--format", "json", env=env)
    assert "finished:completed" in status.stdout, status.stdout
    print(f"deployed run: {seconds:.1f} s")

    with (root / "home" / "runs" / "deployed" / "metrics.csv").open() as fh:
        deployed = {(r["round"], r["scenario"], r["task"]): (float(r["auc"]), float(r["logloss"]))
                    for r in csv.DictReader(fh)}
    assert {k[1] for k in deployed} == set(SCENARIOS) and len(deployed) == 2 * 4 * 2

    # The same seed and config in-process. Both sides run the same code on the same
    # rows in the same order with one torch thread (train.num_threads=1), so the float
    # operations are the same; the only allowed difference is the float32 round trip
    # of arrays through protobuf, which is exact. Hence a tight tolerance: a real
    # divergence (another init, order or seed) moves these tiny-test-set AUCs by > 1e-3.
    _, strategy, _ = run_inprocess([f"paths.home={tmp_path}", *RUN], tmp_path / "inproc")
    inproc = {(str(r["round"]), r["scenario"], r["task"]): (r["auc"], r["logloss"]) for r in strategy.rows}
    assert inproc.keys() == deployed.keys()
    for key, (auc, ll) in inproc.items():
        assert deployed[key][0] == pytest.approx(auc, abs=1e-6), key
        assert deployed[key][1] == pytest.approx(ll, abs=1e-6), key

    # The unenrolled node never joined: its SuperNode was refused and no reply came from it.
    intruder_log = (deployment["logs"] / "intruder.log").read_text()
    assert "claims scenario NL" not in run.stdout
    assert "Failed to activate SuperNode" in intruder_log, intruder_log[-2000:]
    assert deployment["clients"]["intruder"].poll() not in (None, 0)  # it gave up and exited non-zero


@pytest.mark.slow
def test_killed_supernode_round_completes_and_node_rejoins_with_its_state(deployment):
    """FR's SuperNode dies in round 2: round 2 aggregates the other three, FR comes back
    (a new process, a new Flower node id) and trains round 3 from its own saved state."""
    env, root = deployment["env"], deployment["root"]
    overrides = " ".join([*RUN, "num_rounds=3", "run_name=faults", "strategy.participation.min_train_nodes=3",
                          "server.round_timeout=120"])
    run = subprocess.Popen([str(Path(sys.executable).parent / "flwr"), "run", str(REPO), "deploy", "--stream",
                            "--run-config", f"overrides='{overrides}'"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(600, run.kill)  # never hang the suite
    watchdog.start()
    out, killed, restarted = [], False, False
    try:
        for line in run.stdout:
            out.append(line)
            if not killed and "[ROUND 2/3]" in line:
                time.sleep(1.0)  # the round's train messages are out; FR has not replied yet
                stop_tree(deployment["clients"]["FR"])
                killed = True
            if killed and not restarted and "Round 2, test split" in line:
                deployment["clients"]["FR"] = deployment["start_client"]("FR", "FR-restarted")
                restarted = True
        run.wait(timeout=60)
    finally:
        watchdog.cancel()
    log = "".join(out)
    assert run.returncode == 0 and killed and restarted, log[-3000:]
    assert "finished:completed" in _flwr("ls", "deploy", "--format", "json", env=env).stdout

    run_dir = root / "home" / "runs" / "faults"
    trained = json.loads((run_dir / "train_log.json").read_text())
    rounds = {s: sorted(r["round"] for r in trained if r["scenario"] == s) for s in SCENARIOS}
    assert rounds == {"NL": [1, 2, 3], "ES": [1, 2, 3], "FR": [1, 3], "US": [1, 2, 3]}, rounds
    assert "round 2: no usable reply from FR" in log
    with (run_dir / "metrics.csv").open() as fh:
        fr_rounds = sorted({int(r["round"]) for r in csv.DictReader(fh) if r["scenario"] == "FR"})
    assert fr_rounds == [1, 3]
    # FR's local state was reloaded from disk, not rebuilt: it counts both rounds it trained.
    saved = torch.load(root / "state" / "FR" / "faults" / "FR.pt", weights_only=True)
    assert saved["rounds_trained"] == 2
