"""pfms-run's own checks, without starting a SuperLink: bad data stop it before any
process starts, and a run that did not complete gives exit 1 and its reason in one line."""

from __future__ import annotations

import shutil
import stat
import sys

import pytest

from conftest import FIXTURES, REPO
from pfms_server.deploy import local_run


def test_bad_data_stop_pfms_run_before_any_process_starts(tmp_path, capsys):
    root = tmp_path / "AliExpress"
    for scenario in ("NL", "ES"):
        (root / f"AliExpress_{scenario}").mkdir(parents=True)
        for name in ("train", "test"):
            shutil.copy(FIXTURES / "aliexpress_sample" / f"rechub_US_{name}.csv",
                        root / f"AliExpress_{scenario}" / f"{name}.csv")
    (root / "AliExpress_ES" / "test.csv").unlink()
    code = local_run.main(["--app", str(REPO), f"paths.home={tmp_path}", "dataset=aliexpress",
                           f"dataset.root={root}", "dataset.scenarios=[NL,ES]", "num_rounds=2"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err == f"pfms-run: {root / 'AliExpress_ES' / 'test.csv'}: file not found\n"
    assert "SuperLink" not in out  # nothing was started


def fake_flwr(tmp_path, runs: list[dict]):
    """A bin folder whose `flwr ls ... --format json` prints ``runs``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "flwr"
    script.write_text(f"#!{sys.executable}\nimport json\nprint(json.dumps({{'success': True, 'runs': {runs!r}}}))\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir


@pytest.mark.parametrize("status,details,code,line", [
    ("finished:completed", "", 0, None),
    ("finished:failed", "ServerApp failed with exception: pfms: run failed: scenario(s) ES never trained "
     "(rounds aggregated: 2)", 1,
     "pfms-run: the run did not complete (finished:failed): pfms: run failed: scenario(s) ES never trained "
     "(rounds aggregated: 2)"),
    ("finished:failed", "Simulation failed with exception: /d/ES/test.csv: file not found", 1,
     "pfms-run: the run did not complete (finished:failed): /d/ES/test.csv: file not found"),
    ("finished:stopped", "", 1, "pfms-run: the run did not complete (finished:stopped): no details"),
])
def test_run_status_is_the_exit_code_with_the_reason_in_one_line(tmp_path, capsys, status, details, code, line):
    older = {"run-id": 1, "status": "finished:completed", "status-details": ""}
    bindir = fake_flwr(tmp_path, [older, {"run-id": 7, "status": status, "status-details": details}])
    assert local_run.run_status(bindir, {"PATH": str(bindir)}) == code
    out, err = capsys.readouterr()
    assert out == f"pfms-run: run status {status}\n"
    assert err == ("" if line is None else line + "\n")


def test_sigterm_stops_the_superlink_it_started(tmp_path, monkeypatch, capsys):
    """pfms-run killed by SIGTERM (a scheduler, `timeout`) runs its cleanup: the SuperLink
    (here a stand-in that listens on the port and never exits) is stopped, exit 143."""
    import os
    import signal
    import threading

    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "superlink.pid"
    (bindir / "flower-superlink").write_text(
        f"#!{sys.executable}\nimport os, socket, sys, time\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', int(sys.argv[sys.argv.index('--port') + 1]))); s.listen()\n"
        "time.sleep(600)\n")
    (bindir / "flwr").write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    for script in bindir.iterdir():
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(local_run, "bin_dir", lambda: bindir)
    monkeypatch.setattr("pfms_server.data_check.check_scenarios", lambda cfg: None)
    before = signal.getsignal(signal.SIGTERM)

    def terminate_when_running() -> None:
        for _ in range(300):
            if pidfile.is_file() and pidfile.read_text():
                break
            threading.Event().wait(0.1)
        threading.Event().wait(1.0)  # let pfms-run reach `flwr run`
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_running)
    killer.start()
    code = local_run.main(["--app", str(REPO), f"--flwr-home={tmp_path / 'flwr'}", f"paths.home={tmp_path}"])
    killer.join()
    err = capsys.readouterr().err
    assert code == 143 and "terminated (SIGTERM)" in err
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert signal.getsignal(signal.SIGTERM) is before  # the test process's handler is back


@pytest.mark.parametrize("extra, cpus", [([], 1), (["simulation.client_cpus=2"], 2)])
def test_federation_config_gives_each_clientapp_its_ray_cpus(extra, cpus):
    """What Flower's own parser makes of pfms-run's --federation-config: every scenario a
    SuperNode, each ClientApp ``simulation.client_cpus`` Ray CPUs (its torch threads)."""
    from flwr.common.config import parse_config_args
    from flwr.supercore.utils import simulation_config_from_json

    cfg = local_run.checked_config(" ".join(["dataset.scenarios=[NL,ES,FR]", *extra]))
    text = local_run.federation_config(cfg, 3)
    parsed = {k.replace("-", "_"): v for k, v in parse_config_args([text]).items()}
    sim = simulation_config_from_json(parsed)
    assert (sim.num_supernodes, sim.client_resources_num_cpus) == (3, cpus)
    assert not sim.HasField("client_resources_num_gpus")  # train.device=cpu asks Ray for no GPU


def test_a_bad_client_cpus_stops_pfms_run_naming_the_key(capsys):
    assert local_run.main(["--app", str(REPO), "simulation.client_cpus=0"]) == 2
    assert "simulation.client_cpus" in capsys.readouterr().err
