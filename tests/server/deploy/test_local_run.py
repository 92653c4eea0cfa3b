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
