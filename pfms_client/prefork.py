"""pfms-client's SuperExec: every ClientApp process is forked from a parent that has
already imported torch and the other heavy libraries.

Flower runs every message in a fresh ``flwr-clientapp`` process: its SuperExec polls
the SuperNode for a task and starts one with ``subprocess.Popen``. Each message then
pays Python's start and the imports of flwr, numpy, pandas, pyarrow and torch: seconds
of CPU per message, four times over when four SuperNodes share a 2-core host (see
benchmarks/bench_deploy.py's breakdown). This module runs Flower's own SuperExec loop
(``flwr.supercore.superexec.run_superexec``: the same task polling, tokens and
plugin) with one part replaced, the executor: ``launch`` forks this process and the
child runs ``flwr-clientapp``'s entry point with exactly the arguments Flower's
SubprocessExecutor passes on its command line. A message still gets a fresh process
(state lives in ``Context.state`` and files, as Flower designs it); it only finds its
libraries imported.

Only third-party libraries are imported ahead (``WARM_MODULES``). The app's own code
(pfms_client) is imported by the child from the FAB Flower delivered, as it would be
in a fresh process: Flower's loader reuses a module already in ``sys.modules``, so
importing the app here would run this install's copy instead of the FAB's.

Flower's SuperExec has no plug-in point for executors (its factory knows subprocess
and Kubernetes), so ``run`` passes the fork executor in by rebinding the factory name
in the ``run_superexec`` module of this process only; the module's version range is
pinned in pyproject.toml and tests/system/test_deployment.py runs it for real.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

# Imported before the first fork, in this order; a library that is not installed is
# skipped. Neither torch nor torch._dynamo starts a thread at import, so forking after
# them is safe. torch._dynamo: torch imports it on the first optimizer a process builds
# (``Optimizer.__init__`` runs under ``torch._disable_dynamo``); it was 3 s of CPU in
# every train message (cProfile of the deployment test's ClientApps).
WARM_MODULES = (
    "numpy", "pandas", "pyarrow", "pyarrow.csv", "pyarrow.parquet", "omegaconf", "hydra", "hydra.compose",
    "sklearn.metrics", "torch", "torch.nn", "torch.optim", "torch._dynamo",
    "flwr.app", "flwr.clientapp", "flwr.supernode.cli",
)


def warm_up(modules: Sequence[str] = WARM_MODULES) -> tuple[list[str], float]:
    """Import ``modules`` (those installed); returns them and the seconds it took."""
    t0 = time.perf_counter()
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        done.append(name)
    return done, time.perf_counter() - t0


def clientapp_argv(spec: Any) -> list[str]:
    """``flwr-clientapp``'s command line for ``spec``, as Flower's SubprocessExecutor builds it."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND

    args = [TASK_TYPE_TO_COMMAND[spec.task_type], TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
            spec.runtime_api_address, "--token", spec.token]
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args.extend(["--root-certificates", spec.root_certificates_path])
    if spec.parent_pid is not None:
        args.extend(["--parent-pid", str(spec.parent_pid)])
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    return args


def _child(spec: Any) -> int:
    """What the forked process runs: flwr-clientapp's entry point; its exit code."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # not the parent's handlers
    if spec.suppress_output:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    from flwr.supernode.cli import flwr_clientapp  # the console script flwr-clientapp

    sys.argv = clientapp_argv(spec)
    try:
        flwr_clientapp()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  a child must never return into the parent's loop
        traceback.print_exc()
        return 1
    return 0


class ForkExecutor:
    """Flower's executor interface (launch, reconcile, capacity, close) by ``os.fork``."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types: set[Any], *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set[Any], set[str]]:
        """Like the subprocess executor, and only ClientApp tasks: this is a SuperNode's SuperExec."""
        from flwr.supercore.constant import TaskType

        return {t for t in supported_task_types if t == TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, *args: Any, **kwargs: Any) -> None:
        """Forks have no capacity gate."""

    def launch(self, spec: Any) -> Any:
        from flwr.supercore.superexec.executor.types import LaunchResult

        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(spec)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the children that ended (no zombies pile up over a long run)."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        self.reconcile()


def run(runtime_api_address: str, insecure: bool, root_certificates: str | None, parent_pid: int | None) -> None:
    from flwr.supercore.superexec import run_superexec as superexec

    executor = ForkExecutor()
    superexec.get_executor = lambda *args, **kwargs: executor  # this process only: see the module docstring
    superexec.run_superexec(runtime_api_address=runtime_api_address, insecure=insecure,
                            root_certificates_path=root_certificates, parent_pid=parent_pid)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pfms_client.prefork", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (host:port)")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) exits")
    args = parser.parse_args(argv)
    modules, seconds = warm_up()
    print(f"pfms-client: ClientApp processes fork from a parent with {len(modules)} libraries imported "
          f"({seconds:.1f} s, paid once)", file=sys.stderr, flush=True)
    run(args.runtime_api_address, args.insecure, args.root_certificates, args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
