"""pfms-client's forking SuperExec: the child runs flwr-clientapp with Flower's own command
line, is reaped, and only ClientApp tasks are taken."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import subprocess_executor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus

from pfms_client import prefork


def spec(**kw) -> ExecutionSpec:
    base = dict(task_type=TaskType.CLIENT_APP, runtime_api_address="127.0.0.1:9094", token="tok-1", insecure=False,
                root_certificates_path="/certs/ca.crt", runtime_dependency_install=False, parent_pid=77,
                suppress_output=False, task_id=5)
    return ExecutionSpec(**{**base, **kw})


@pytest.mark.parametrize("changes", [{}, {"insecure": True}, {"parent_pid": None, "runtime_dependency_install": True},
                                     {"root_certificates_path": None}])
def test_the_command_line_is_the_one_flowers_subprocess_executor_runs(monkeypatch, changes):
    seen = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **kw: seen.append(list(args)))
    subprocess_executor.SubprocessExecutor().launch(spec(**changes))
    assert prefork.clientapp_argv(spec(**changes)) == seen[0]


def test_a_launch_forks_a_child_that_runs_flwr_clientapp_and_is_reaped(tmp_path, monkeypatch):
    out = tmp_path / "child.json"

    def fake_clientapp() -> None:  # runs in the forked child only
        out.write_text(json.dumps({"argv": sys.argv, "pid": os.getpid()}))
        sys.exit(0)

    monkeypatch.setattr("flwr.supernode.cli.flwr_clientapp", fake_clientapp)  # the console script's target
    executor = prefork.ForkExecutor()
    assert executor.launch(spec(insecure=True)).status == LaunchResultStatus.ACCEPTED
    [child] = executor.children
    deadline = time.monotonic() + 20
    while executor.children and time.monotonic() < deadline:
        executor.reconcile()
        time.sleep(0.05)
    assert not executor.children  # reaped: no zombie left
    got = json.loads(out.read_text())
    assert got["pid"] == child != os.getpid()
    assert got["argv"] == prefork.clientapp_argv(spec(insecure=True))


def test_only_clientapp_tasks_are_taken():
    types, hashes = prefork.ForkExecutor().get_eligible_capacity({TaskType.CLIENT_APP, TaskType.SERVER_APP})
    assert types == {TaskType.CLIENT_APP} and hashes == set()


def test_warm_up_imports_what_is_installed_and_skips_the_rest():
    done, seconds = prefork.warm_up(["json", "no_such_module_pfms", "numpy"])
    assert done == ["json", "numpy"] and seconds >= 0
