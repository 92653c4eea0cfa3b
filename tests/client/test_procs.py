"""Stopping a Flower daemon that a signal has already reached: wait for its graceful exit,
never a second SIGTERM (which kills it before it deactivates its node)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pfms_client.procs import catches, stop_tree

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")

# Like Flower's register_signal_handlers: the first SIGTERM puts the default handler back and
# starts a graceful exit that takes a while (here 1 s, then a file says it finished).
DAEMON = """
import signal, sys, time
from pathlib import Path
def graceful(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(1.0)
    Path(sys.argv[1]).write_text("deactivated")
    sys.exit(0)
signal.signal(signal.SIGTERM, graceful)
Path(sys.argv[1] + ".ready").write_text("")
while True:
    time.sleep(0.05)
"""


def _daemon(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    done = tmp_path / "done"
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, str(done)])
    deadline = time.monotonic() + 30
    while not Path(f"{done}.ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    return proc, done


def _wait_until_exiting(proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while catches(proc.pid, signal.SIGTERM):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_catches_reads_the_handler_table(tmp_path):
    proc, _ = _daemon(tmp_path)
    try:
        assert catches(proc.pid, signal.SIGTERM) is True
        assert catches(proc.pid, signal.SIGUSR1) is False
    finally:
        proc.kill()
        proc.wait()
    assert catches(2**22 + 7, signal.SIGTERM) is None  # no such process


@pytest.mark.parametrize("spare", [True, False])
def test_a_daemon_already_signalled_finishes_its_graceful_exit_only_when_spared(tmp_path, spare):
    proc, done = _daemon(tmp_path)
    proc.send_signal(signal.SIGTERM)  # the whole group was stopped: the daemon got it too
    _wait_until_exiting(proc)
    stop_tree(proc, grace=10, spare_exiting=spare)
    assert proc.poll() is not None
    # spared, it ends its exit (0, the file written); a second SIGTERM kills it mid-exit
    assert (done.exists(), proc.returncode) == ((True, 0) if spare else (False, -signal.SIGTERM))


def test_a_spared_daemon_not_yet_signalled_still_gets_its_sigterm(tmp_path):
    proc, done = _daemon(tmp_path)
    t0 = time.monotonic()
    stop_tree(proc, grace=10, spare_exiting=True)
    assert done.read_text() == "deactivated" and proc.returncode == 0
    assert time.monotonic() - t0 < 8  # stopped by the SIGTERM, not by waiting out the grace
