"""pfms-client's checks before it starts a SuperNode: exit 2 for anything wrong with
its own inputs (data, certificates, keys, address), exit 3 when no SuperLink answers,
and the command it would run once everything is in order.

No Flower process is started: ``run_foreground`` is replaced in every test, and the
tests that get past the reachability check listen on a loopback port themselves.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pfms_client import client_cli, threads
from pfms_client.data.synthetic.aliexpress import generate_scenario
from pfms_client.procs import free_port


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A dataset root with one tiny valid scenario, NL (a deployed node never generates data)."""
    root = tmp_path_factory.mktemp("client_data")
    generate_scenario(root, "NL", rows_train=200, rows_test=100)
    return root


@pytest.fixture(autouse=True)
def registry(monkeypatch, tmp_path) -> Path:
    """Every test: nodes register in a private folder, not the user's."""
    folder = tmp_path / "nodes"
    monkeypatch.setenv(threads.REGISTRY_ENV, str(folder))
    return folder


@pytest.fixture(autouse=True)
def no_supernode(monkeypatch):
    """Every test: a call of run_foreground is recorded, never run."""
    calls = []

    def record(cmd, env, companion=None):
        calls.append((list(cmd), dict(env), companion))
        return 0

    monkeypatch.setattr(client_cli, "run_foreground", record)
    return calls


@pytest.fixture
def listening():
    """host:port of a loopback socket that accepts connections (a stand-in SuperLink)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"127.0.0.1:{s.getsockname()[1]}"


# The discard port: nobody answers there. A test that expects exit 2 must fail before
# the reachability check, so a regression that reaches it fails fast (exit 3) too.
NOBODY = "127.0.0.1:9"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    if "--connect-timeout" not in argv:
        argv = (*argv, "--connect-timeout", "0.1")
    code = client_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """pfms-client reports a failure as exactly one line on stderr."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pfms-client: "), err
    return lines[0]


# -- exit 2: this node's own inputs ------------------------------------------------------
def test_malformed_csv_names_file_line_and_column(dataset, tmp_path, capsys, no_supernode):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    train = data / "NL" / "train.csv"
    lines = train.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    fields = lines[6].rstrip("\n").split(",")  # line 7 of the file (header = line 1)
    fields[header.index("click")] = "yes"
    lines[6] = ",".join(fields) + "\n"
    train.write_text("".join(lines))

    code, _, err = run(capsys, "--scenario", "NL", "--data", str(data), "--superlink", NOBODY,
                       "--insecure")
    assert code == 2  # before any attempt to reach the SuperLink
    line = one_line(err)
    assert f"{train} line 7, column 'click': non-numeric value 'yes'" in line, line
    assert not no_supernode


def test_valid_data_passes_the_same_check(dataset, capsys, listening, no_supernode):
    """The corruption above is what fails: the untouched copy validates and starts."""
    code, out, _ = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", listening, "--insecure")
    assert code == 0
    assert "pfms-client: NL: 180 train / 20 val / 100 test rows OK" in out
    assert len(no_supernode) == 1


def test_the_start_check_maps_the_store_without_importing_torch(dataset, tmp_path):
    """pfms-client validates and maps the store at start; importing torch there cost every
    start seconds of CPU, paid again by the prefork parent and each ClientApp."""
    import subprocess

    code = ("import sys; from pfms_client.client_cli import validate_data; "
            f"validate_data('NL', __import__('pathlib').Path({str(dataset)!r}), ''); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PFMS_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["pfms-client: NL: 180 train / 20 val / 100 test rows OK", "False"]


def test_clientapps_fork_from_a_warm_superexec_unless_asked_otherwise(dataset, capsys, listening, no_supernode):
    """Default: the SuperNode runs with --isolation process and pfms_client.prefork is its
    SuperExec on the SuperNode's runtime port; --executor subprocess is Flower's own."""
    args = ["--scenario", "NL", "--data", str(dataset), "--superlink", listening, "--insecure", "--runtime-port", "9555"]
    assert run(capsys, *args)[0] == 0
    cmd, _, companion = no_supernode[-1]
    assert cmd[cmd.index("--isolation") + 1] == "process" and cmd[cmd.index("--port") + 1] == "9555"
    exec_cmd = companion(4242)
    assert exec_cmd[1:] == ["-m", "pfms_client.prefork", "--runtime-api-address", "127.0.0.1:9555", "--insecure",
                            "--parent-pid", "4242"]
    assert run(capsys, *args, "--executor", "subprocess")[0] == 0
    cmd, _, companion = no_supernode[-1]
    assert cmd[cmd.index("--isolation") + 1] == "subprocess" and companion is None


@pytest.mark.parametrize("address", ["nohost", "host:99999", "host:abc", ":9092", "host:0"])
def test_malformed_superlink_address(dataset, capsys, address, no_supernode):
    code, _, err = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", address, "--insecure")
    assert code == 2
    assert one_line(err) == f"pfms-client: address {address!r} is not HOST:PORT"
    assert not no_supernode


def test_missing_certificate(dataset, tmp_path, capsys, no_supernode):
    cert = tmp_path / "nowhere" / "ca.crt"
    code, _, err = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", NOBODY,
                       "--root-certificates", str(cert))
    assert code == 2
    assert one_line(err) == f"pfms-client: missing certificate {cert} (or pass --insecure)"
    assert not no_supernode


def test_missing_auth_key(dataset, tmp_path, capsys, no_supernode):
    key = tmp_path / "node.key"
    code, _, err = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", NOBODY,
                       "--insecure", "--auth-key", str(key))
    assert code == 2
    assert one_line(err) == f"pfms-client: missing node key {key}"
    assert not no_supernode


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_data_that_is_not_a_folder(tmp_path, capsys, kind, no_supernode):
    data = tmp_path / "data"
    if kind == "file":
        data.write_text("search_id,click\n")
    code, _, err = run(capsys, "--scenario", "NL", "--data", str(data), "--superlink", NOBODY,
                       "--insecure")
    assert code == 2
    assert one_line(err) == f"pfms-client: --data {data.resolve()} is not a folder"
    assert not no_supernode


def test_scenario_not_in_the_dataset(dataset, capsys, no_supernode):
    code, _, err = run(capsys, "--scenario", "XX", "--data", str(dataset), "--superlink", NOBODY,
                       "--insecure")
    assert code == 2
    assert one_line(err) == "pfms-client: scenario 'XX' is not in dataset.scenarios ['NL', 'ES', 'FR', 'US']"
    assert not no_supernode


def test_a_scenario_of_the_dataset_without_its_folder(dataset, capsys, no_supernode):
    """ES is in dataset.scenarios, but this node holds only NL: not generated, an error."""
    code, _, err = run(capsys, "--scenario", "ES", "--data", str(dataset), "--superlink", NOBODY,
                       "--insecure")
    assert code == 2
    assert one_line(err) == f"pfms-client: {dataset.resolve() / 'ES'}: scenario folder for 'ES' not found"
    assert not (dataset / "ES").exists()
    assert not no_supernode


# -- exit 3: nobody answers ----------------------------------------------------------------
def test_no_superlink_answers(dataset, capsys, no_supernode):
    port = free_port()  # bound and released: nobody listens there
    t0 = time.monotonic()
    code, _, err = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", f"127.0.0.1:{port}",
                       "--insecure", "--connect-timeout", "0.5")
    waited = time.monotonic() - t0
    assert code == 3
    assert one_line(err) == f"pfms-client: no SuperLink answers at 127.0.0.1:{port} (waited 0.5 s)"
    assert "--insecure" not in err  # the warning comes only for a node that goes on to connect
    assert waited < 10
    assert not no_supernode


# -- all checks pass: the SuperNode command ------------------------------------------------
def _node_config(cmd: list[str]) -> str:
    return cmd[cmd.index("--node-config") + 1]


def test_insecure_warns_and_runs_an_insecure_supernode(dataset, tmp_path, capsys, listening, no_supernode):
    code, _, err = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", listening, "--insecure",
                       "--state-dir", str(tmp_path / "state"), "--runtime-port", "9876")
    assert code == 0
    assert one_line(err) == "pfms-client: WARNING --insecure: traffic to the SuperLink is unencrypted"
    [(cmd, env, _)] = no_supernode
    assert Path(cmd[0]).name == "flower-supernode"
    assert cmd[cmd.index("--superlink") + 1] == listening
    assert "--insecure" in cmd and "--root-certificates" not in cmd
    assert cmd[cmd.index("--port") + 1] == "9876"
    assert _node_config(cmd) == (f'scenario="NL" data-path="{dataset.resolve()}" threads="auto" '
                                 f'nodes-per-host="0" node-registry="{tmp_path / "nodes"}" '
                                 f'state-dir="{(tmp_path / "state").resolve()}"')
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"


def test_tls_and_node_auth_pass_their_files_and_do_not_warn(dataset, tmp_path, capsys, listening, no_supernode):
    cert, key = tmp_path / "ca.crt", tmp_path / "node.key"
    cert.write_text("cert")  # only their presence is checked here; Flower reads them
    key.write_text("key")
    code, _, err = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", listening,
                       "--root-certificates", str(cert), "--auth-key", str(key))
    assert code == 0
    assert err == ""
    [(cmd, _, _)] = no_supernode
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(cert.resolve())
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.resolve())
    assert _node_config(cmd) == (f'scenario="NL" data-path="{dataset.resolve()}" threads="auto" '
                                 f'nodes-per-host="0" node-registry="{tmp_path / "nodes"}"')


# -- torch threads: the host's cores shared among its nodes ---------------------------------
def test_threads_option_goes_into_node_config_and_is_logged_in_one_line(dataset, capsys, listening, no_supernode,
                                                                        registry):
    code, out, _ = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", listening, "--insecure",
                       "--threads", "3")
    assert code == 0
    assert 'threads="3"' in _node_config(no_supernode[0][0])
    [line] = [ln for ln in out.splitlines() if "torch threads" in ln]
    assert line.startswith("pfms-client: NL: torch threads 3 (set with --threads)")
    assert list(registry.iterdir()) == []  # the node's entry is gone when pfms-client ends


def test_auto_threads_divide_the_usable_cores_by_the_nodes_per_host(dataset, capsys, listening, no_supernode):
    code, out, _ = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", listening, "--insecure",
                       "--nodes-per-host", "2")
    assert code == 0
    cores = threads.usable_cores()
    assert f"torch threads {max(1, cores // 2)} = {cores} usable cores // 2 node(s) on this host" in out
    assert 'nodes-per-host="2"' in _node_config(no_supernode[0][0])


@pytest.mark.parametrize("argv, message", [
    (("--threads", "0"), "pfms-client: --threads '0': expected 'auto' or an integer >= 1"),
    (("--threads", "many"), "pfms-client: --threads 'many': expected 'auto' or an integer >= 1"),
    (("--nodes-per-host", "-1"), "pfms-client: --nodes-per-host -1: expected an integer >= 0"),
])
def test_bad_thread_settings_exit_2_in_one_line(dataset, capsys, no_supernode, argv, message):
    code, _, err = run(capsys, "--scenario", "NL", "--data", str(dataset), "--superlink", NOBODY, "--insecure", *argv)
    assert code == 2 and one_line(err) == message
    assert not no_supernode


def test_registry_counts_live_nodes_only(tmp_path):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    reg = tmp_path / "reg"
    assert threads.live_nodes(reg) == 1  # no folder yet: this node alone
    mine = threads.register(reg)
    (reg / "999999999").write_text("12345")  # a pid that does not exist
    (reg / "1").write_text("not-its-start-time")  # a live pid whose start time differs: a reused pid
    (reg / "notes.txt").write_text("x")
    assert threads.live_nodes(reg) == 1
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        threads.register(reg, child.pid)
        assert threads.live_nodes(reg) == 2
        cores = threads.usable_cores()
        assert threads.choose("auto", 0, reg)[0] == max(1, cores // 2)
    finally:
        child.kill()
        child.wait()
    assert threads.live_nodes(reg) == 1  # the dead child no longer counts
    threads.unregister(mine)
    threads.unregister(mine)  # twice is fine
    assert threads.choose("auto", 0, reg)[0] == cores
    assert threads.choose("2", 5, reg) == (2, "torch threads 2 (set with --threads)")


def test_clientapp_takes_its_share_unless_the_run_config_sets_num_threads(tmp_path):
    """The ClientApp applies the node's share at every message; train.num_threads wins."""
    import torch  # noqa: PLC0415
    from flwr.app import Context, RecordDict  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    from pfms_client.client_app import torch_threads  # noqa: PLC0415

    before = torch.get_num_threads()
    reg = tmp_path / "reg"
    threads.register(reg)
    node = {"threads": "auto", "nodes-per-host": "0", "node-registry": str(reg)}
    ctx = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    try:
        assert torch_threads(ctx, OmegaConf.create({"train": {"num_threads": None}})) == threads.usable_cores()
        assert torch.get_num_threads() == threads.usable_cores()
        assert torch_threads(ctx, OmegaConf.create({"train": {"num_threads": 1}})) == 1
        assert torch.get_num_threads() == 1
        plain = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
        assert torch_threads(plain, OmegaConf.create({"train": {"num_threads": None}})) is None  # outside Ray
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class _RayActor:
    """What ray.is_initialized/get_runtime_context answer inside a simulation's actor."""

    def __init__(self, cpus):
        self.cpus = cpus

    def is_initialized(self):
        return True

    def get_runtime_context(self):
        return SimpleNamespace(get_assigned_resources=lambda: {"CPU": self.cpus} if self.cpus else {})


@pytest.mark.parametrize("cpus, expected", [(1.0, 1), (3.0, 3), (0.5, 1), (None, None)])
def test_in_a_ray_actor_the_clientapp_takes_the_cpus_ray_assigned(monkeypatch, cpus, expected):
    """Flower's simulation gives each ClientApp actor client-resources num-cpus but no thread
    count: torch follows the assignment (a fraction still gets one thread); the run config wins."""
    import torch  # noqa: PLC0415
    from flwr.app import Context, RecordDict  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    from pfms_client.client_app import torch_threads  # noqa: PLC0415

    before = torch.get_num_threads()
    monkeypatch.setitem(sys.modules, "ray", _RayActor(cpus))
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    try:
        torch.set_num_threads(2)
        assert torch_threads(ctx, OmegaConf.create({"train": {"num_threads": None}})) == expected
        assert torch.get_num_threads() == (expected or 2)
        assert torch_threads(ctx, OmegaConf.create({"train": {"num_threads": 2}})) == 2
    finally:
        torch.set_num_threads(before)
