"""``pfms-run``: ``flwr run .`` on one machine, in this environment, leaving nothing behind.

Flower's managed local SuperLink re-installs the app's dependencies with uv by
default (a second torch download) and outlives the command as a detached
process. This launcher instead starts its own ``flower-superlink --simulation
--disable-runtime-dependency-installation`` on a free loopback port with a
private FLWR_HOME, submits the app with ``flwr run <app> pfms-local --stream``,
and stops every process it started when the run ends (or fails, or on Ctrl-C or
SIGTERM: a SIGTERM, as a job scheduler or `timeout` sends it, ends pfms-run
through the same cleanup, exit code 143).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pfms_client.procs import bin_dir, flower_env, free_port, stop_tree

CONNECTION = "pfms-local"
SIGTERM_EXIT = 128 + signal.SIGTERM


class _Terminated(Exception):
    """SIGTERM arrived: unwind through the cleanup like Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}; see {log_file}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not open port {port} within {timeout:.0f}s; see {log_file}")


def write_flwr_config(flwr_home: Path, port: int) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def run_status(bindir: Path, env: dict[str, str]) -> int:
    """`flwr run --stream` exits 0 even when the ServerApp failed: ask the SuperLink.

    Exit code 0 only for ``finished:completed``; otherwise 1, with the run's status
    details (the ServerApp's one-line reason, e.g. "no round aggregated") on stderr."""
    out = subprocess.run([str(bindir / "flwr"), "ls", CONNECTION, "--format", "json"], env=env,
                         capture_output=True, text=True, check=False)
    try:
        runs = json.loads(out.stdout).get("runs", [])
        last = max(runs, key=lambda r: int(r.get("run-id", 0)))
        status, details = str(last.get("status", "")), str(last.get("status-details") or "")
    except (ValueError, AttributeError, TypeError):
        print(f"pfms-run: could not read the run status: {out.stdout[-500:]} {out.stderr[-500:]}", file=sys.stderr)
        return 1
    print(f"pfms-run: run status {status}", flush=True)
    if status.endswith(":completed"):
        return 0
    print(f"pfms-run: the run did not complete ({status}): {one_line(details) or 'no details'}", file=sys.stderr)
    return 1


def one_line(text: str) -> str:
    """The reason in Flower's status details, without the wrapper Flower adds."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    for prefix in ("ServerApp failed with exception: ", "Simulation failed with exception: "):
        line = line.removeprefix(prefix)
    return line


def checked_config(overrides: str) -> Any:
    """Every value of the run checked (a ConfigError naming the key)."""
    from ..config_check import load_run_config

    return load_run_config(overrides)


def federation_config(cfg: Any, k: int) -> str:
    """``num-supernodes=k``, each ClientApp's Ray CPUs (``simulation.client_cpus``: the
    ClientApp's torch threads follow them), and its Ray GPU share when train.device is (or
    auto finds) cuda.

    Flower's default of 2 CPUs per ClientApp runs the ClientApps of a 2-core host one at a
    time with 2 torch threads each. Beside one busy process (a nice-19 loop) such a
    ClientApp trained 45x slower (2.6 s -> 117 s per message; a 3-round run 89.5 s ->
    1,490 s), while one CPU each ran 75.1 s idle and 100.4 s beside the loop (README,
    "What the main job does"). The same trainer outside Ray, 2 threads beside the loop,
    did not slow down (benchmarks/bench_trainer.py): the cause lies in how the actor
    runs, which we did not trace further."""
    config = f"num-supernodes={k} client-resources-num-cpus={int(cfg.simulation.client_cpus)}"
    device = str(cfg.train.device)
    if device == "cpu":
        return config
    from pfms_client.trainer import client_gpu_share

    gpus = client_gpu_share(device, k)
    return config + (f" client-resources-num-gpus={gpus:g}" if gpus else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pfms-run",
        description="Run PF-MSMTrec with `flwr run` on this machine (own SuperLink, no dependency re-install).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. num_rounds=5 model=paper")
    parser.add_argument("--app", default=".", help="Flower app folder (default: .)")
    parser.add_argument("--port", type=int, default=0, help="SuperLink HTTP port (default: a free one)")
    parser.add_argument("--flwr-home", default=None, help="FLWR_HOME for this run (default: a temp folder)")
    parser.add_argument("--keep-flwr-home", action="store_true", help="keep FLWR_HOME (logs) after the run")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    overrides = " ".join(args.overrides)
    try:  # before any process starts: a bad value stops here, naming its key
        cfg = checked_config(overrides)
        fed_config = federation_config(cfg, len(cfg.dataset.scenarios))  # a cuda device this machine lacks stops here
    except ValueError as exc:  # ConfigError
        print(f"pfms-run: {exc}", file=sys.stderr)
        return 2
    k = len(cfg.dataset.scenarios)
    # A simulation: every scenario's data are on this machine, so a bad file stops the
    # run here (file, line, column), before a process starts or a round trains.
    from pfms_client.data import DataValidationError

    from ..data_check import check_scenarios

    t0 = time.perf_counter()
    try:
        check_scenarios(cfg)
    except DataValidationError as exc:
        print(f"pfms-run: {exc}", file=sys.stderr)
        return 2
    print(f"pfms-run: data of {k} scenarios checked in {time.perf_counter() - t0:.1f} s", flush=True)
    app = Path(args.app).resolve()
    if not (app / "pyproject.toml").is_file():
        print(f"pfms-run: {app} is not a Flower app (no pyproject.toml)", file=sys.stderr)
        return 2
    bindir = bin_dir()
    flwr_home = Path(args.flwr_home or tempfile.mkdtemp(prefix="pfms-flwr-")).resolve()
    port = args.port or free_port()
    write_flwr_config(flwr_home, port)
    # The SuperLink starts flower-superexec, flwr-serverapp, flwr-simulation by name:
    # flower_env puts this environment's bin first so an un-activated venv works too.
    env = flower_env({"FLWR_HOME": str(flwr_home)})
    log_file = flwr_home / "superlink.log"
    superlink_cmd = [
        str(bindir / "flower-superlink"), "--insecure", "--simulation",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(port), "--log-file", str(log_file),
    ]
    from .app_stage import stage_app

    stage = flwr_home / "app-stage"
    shutil.rmtree(stage, ignore_errors=True)  # a previous run's, with --flwr-home
    staged = stage_app(app, stage)  # the same FAB, without flwr run listing a venv inside the app
    run_cmd = [
        str(bindir / "flwr"), "run", str(staged), CONNECTION, "--stream",
        "--federation-config", fed_config,
    ]
    if overrides:
        run_cmd += ["--run-config", f"overrides={overrides!r}"]
    code = 1
    superlink: subprocess.Popen | None = None
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        superlink = subprocess.Popen(superlink_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        print(f"pfms-run: SuperLink pid {superlink.pid} on 127.0.0.1:{port} (FLWR_HOME={flwr_home})", flush=True)
        wait_for_port(port, superlink, args.startup_timeout, log_file)
        code = subprocess.call(run_cmd, env=env)
        if code == 0:
            code = run_status(bindir, env)
    except KeyboardInterrupt:
        code = 130
    except _Terminated:
        print("pfms-run: terminated (SIGTERM); stopping the SuperLink", file=sys.stderr)
        code = SIGTERM_EXIT
    except RuntimeError as exc:
        print(f"pfms-run: {exc}", file=sys.stderr)
        if log_file.is_file():
            print("".join(log_file.read_text(errors="replace").splitlines(True)[-20:]), file=sys.stderr)
    finally:
        if superlink is not None:
            stop_tree(superlink)
        signal.signal(signal.SIGTERM, previous)
        if code == 0 and not args.keep_flwr_home and not args.flwr_home:
            shutil.rmtree(flwr_home, ignore_errors=True)
        elif code != 0:
            print(f"pfms-run: logs kept in {flwr_home}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
