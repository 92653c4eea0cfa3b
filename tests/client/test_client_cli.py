"""pfms-client's checks before it starts a SuperNode: exit 2 for anything wrong with
its own inputs (data, certificates, keys, address), exit 3 when no SuperLink answers,
and the command it would run once everything is in order.

No Flower process is started: ``run_foreground`` is replaced in every test, and the
tests that get past the reachability check listen on a loopback port themselves.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from pfms_client import client_cli
from pfms_client.data.synthetic.aliexpress import generate_scenario
from pfms_client.procs import free_port


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A dataset root with one tiny valid scenario, NL (a deployed node never generates data)."""
    root = tmp_path_factory.mktemp("client_data")
    generate_scenario(root, "NL", rows_train=200, rows_test=100)
    return root


@pytest.fixture(autouse=True)
def no_supernode(monkeypatch):
    """Every test: a call of run_foreground is recorded, never run."""
    calls = []

    def record(cmd, env):
        calls.append((list(cmd), dict(env)))
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
    [(cmd, env)] = no_supernode
    assert Path(cmd[0]).name == "flower-supernode"
    assert cmd[cmd.index("--superlink") + 1] == listening
    assert "--insecure" in cmd and "--root-certificates" not in cmd
    assert cmd[cmd.index("--port") + 1] == "9876"
    assert _node_config(cmd) == (f'scenario="NL" data-path="{dataset.resolve()}" '
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
    [(cmd, _)] = no_supernode
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(cert.resolve())
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.resolve())
    assert _node_config(cmd) == f'scenario="NL" data-path="{dataset.resolve()}"'
