"""Starting and stopping the Flower processes the pfms CLIs own.

Flower's daemons start their helpers (flower-superexec, flwr-serverapp,
flwr-clientapp) by name, so this environment's bin goes first on PATH; and a
process we start is stopped with all its descendants, never by name.

It lives in the client package because pfms-client and the server's tools
(pfms-server, pfms-run) both use it, and the client never imports the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def bin_dir() -> Path:
    return Path(sys.executable).parent


# Seconds between the superexec's looks for a new ClientApp/ServerApp task (Flower's
# default is 1 s, paid by every message of a deployed round). Not shorter: every look
# is a query on the SuperLink's SQLite database, and at 0.1 s (with replies pulled
# every 0.2 s) a loaded 2-core host got "database is locked" errors and a broken run.
# The user's own FLWR_SUPEREXEC_TASK_POLL_INTERVAL wins.
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TASK_POLL_INTERVAL_S = "0.5"


def flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {TASK_POLL_ENV: TASK_POLL_INTERVAL_S, **os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": os.pathsep.join([str(bin_dir()), os.environ.get("PATH", "")])}
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT); a clear ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


def reachable(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout)):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.3)


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def catches(pid: int, sig: int) -> bool | None:
    """Whether process ``pid`` has a handler installed for ``sig`` (Linux's /proc; None where
    that cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        return None
    return None


def stop_tree(proc: subprocess.Popen, grace: float = 10.0, *, spare_exiting: bool = False) -> None:
    """SIGTERM the process and its descendants, then SIGKILL what is left after ``grace`` seconds.

    ``spare_exiting``: the process is a Flower daemon (SuperNode, SuperLink), whose SIGTERM
    handler starts a graceful exit and puts the default handler back. If it no longer
    catches SIGTERM, a signal has reached it already (a whole process group or cgroup was
    stopped: systemd, a test's stop_tree), so it is only waited for: a second SIGTERM would
    kill it before it deactivates its node, and the SuperLink would then count the node
    online, wait for its replies and refuse its restart until its heartbeats run out (60 s)."""
    pids = [proc.pid, *descendants(proc.pid)]
    exiting = spare_exiting and proc.poll() is None and catches(proc.pid, signal.SIGTERM) is False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if exiting and sig == signal.SIGTERM and pid == proc.pid:
                continue
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            proc.poll()
            time.sleep(0.1)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def run_foreground(cmd: list[str], env: dict[str, str],
                   companion: Callable[[int], list[str]] | None = None) -> int:
    """Run a daemon until it exits or we get SIGINT/SIGTERM; then stop its whole tree.

    ``companion`` (given the daemon's pid) is a second process that lives and dies with
    it (pfms-client's SuperExec beside its SuperNode): when either exits, both stop."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    procs = [proc]
    stopping = {"flag": False}

    def handler(signum, frame):  # noqa: ARG001
        stopping["flag"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if companion is not None:
            procs.append(subprocess.Popen(companion(proc.pid), env=env, start_new_session=True))
        while all(p.poll() is None for p in procs) and not stopping["flag"]:
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        codes = [p.poll() for p in procs]
        for p in reversed(procs):
            stop_tree(p, spare_exiting=p is proc)
    if stopping["flag"]:
        return 0
    return next((int(c) for c in codes if c), 0)
