"""Deployed rounds against Flower's own floor: a real SuperLink and K SuperNodes on loopback.

Starts ``pfms-server`` (TLS, node authentication, a private FLWR_HOME) and K
``pfms-client`` SuperNodes as processes, enrols the nodes, then submits with
``flwr run``:

1. pfms (the default config: ``small`` preset, PF-MSMTrec) for R rounds on the
   default synthetic data (20,000 train / 10,000 test rows per scenario);
2. the no-op app in benchmarks/apps/noop: the same messages (a query, train and
   evaluate messages in the schedule pfms used, arrays of the size pfms uploaded,
   the same reply polling) and no work, on the same nodes restarted with Flower's own
   SuperExec (``pfms-client --executor subprocess``: a fresh Python per message). That
   is Flower's floor.

Prints key=value lines:

- ``floor_round_s``, ``pfms_round_s``: wall seconds per round, from the ``[ROUND 1/R]``
  log line to the end of ``flwr run``, divided by R (the final evaluation included);
- ``compute_round_s``: per round, the slowest client's train + evaluate seconds as the
  clients report them (client_seconds.csv of the run), averaged over rounds;
- ``ratio = pfms_round_s / (floor_round_s + compute_round_s)``;
- ``pfms_<part>_s``: per round, the mean client's seconds in process start (Python and
  Flower before the ClientApp module), import (the ClientApp module), config, data
  (open the scenario), model (build it), train, evaluate; ``pfms_waiting_s`` is the
  round's rest: polling, transport, the server's work.

    python benchmarks/bench_deploy.py                 # 4 nodes, 3 rounds, default data
    python benchmarks/bench_deploy.py --rounds 2 --overrides "train.num_threads=1"

Every process it starts is stopped by pid at the end; nothing outside its
temporary folder is written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOOP_APP = REPO / "benchmarks" / "apps" / "noop"
sys.path.insert(0, str(REPO))

from pfms_client.data.synthetic.aliexpress import generate  # noqa: E402
from pfms_client.procs import free_port, reachable, stop_tree  # noqa: E402
from pfms_server.deploy.certs import write_all  # noqa: E402

SCENARIOS = ["NL", "ES", "FR", "US"]
PARTS = ("start", "import", "config", "data", "model", "train", "evaluate")


# How long restart_clients keeps starting a refused node. Flower 1.42's SuperLink lets a
# node that did not deactivate go after 2 missed heartbeats of 30 s (HEARTBEAT_PATIENCE,
# HEARTBEAT_DEFAULT_INTERVAL in flwr.common.constant): about 60 s, 180 s on a loaded host.
ACTIVATION_WAIT_S = 180.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=4, help="SuperNodes, one scenario each (1-4; default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each app (default 3)")
    p.add_argument("--rows-train", type=int, default=20000)
    p.add_argument("--rows-test", type=int, default=10000)
    p.add_argument("--overrides", default="", help="extra Hydra overrides for the pfms run")
    p.add_argument("--client-args", default="", help="extra pfms-client options (e.g. '--threads 2')")
    p.add_argument("--timeout", type=float, default=1800, help="seconds each flwr run may take")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, run folders)")
    p.add_argument("--skip-floor", action="store_true", help="run pfms only")
    return p.parse_args(argv)


class Deployment:
    """pfms-server + K pfms-client processes; stops what it started."""

    def __init__(self, root: Path, scenarios: list[str], client_args: list[str]) -> None:
        self.root, self.scenarios = root, scenarios
        self.certs, self.flwr_home, self.logs = root / "certs", root / "flwr", root / "logs"
        self.data = root / "data"
        self.port = free_port()
        self.env = {**os.environ, "FLWR_HOME": str(self.flwr_home), "PFMS_HOME": str(root / "home"),
                    "PFMS_NODE_REGISTRY": str(root / "nodes")}
        self.procs: list[subprocess.Popen] = []
        self.client_args = client_args

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        fh = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen([sys.executable, *args], env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        self.logs.mkdir(parents=True)
        self.flwr_home.mkdir()
        write_all(self.certs, supernodes=self.scenarios)
        self._start("server", "-m", "pfms_server.deploy.server_cli", "--host", "127.0.0.1", "--port", str(self.port),
                    "--certs-dir", str(self.certs), "--enable-supernode-auth", "--flwr-home", str(self.flwr_home))
        if not reachable("127.0.0.1", self.port, 60):
            raise RuntimeError((self.logs / "server.log").read_text()[-2000:])
        (self.flwr_home / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs / "ca.crt"}"\n')
        for s in self.scenarios:
            reg = self.flwr("supernode", "register", str(self.certs / "supernodes" / f"{s}.pub"), "bench")
            if reg.returncode != 0:
                raise RuntimeError(reg.stdout + reg.stderr)
        self.start_clients(self.client_args)

    def _start_client(self, s: str, extra: list[str], log_name: str) -> subprocess.Popen:
        return self._start(log_name, "-m", "pfms_client.client_cli", "--scenario", s, "--data", str(self.data),
                           "--superlink", f"127.0.0.1:{self.port}", "--root-certificates",
                           str(self.certs / "ca.crt"), "--auth-key", str(self.certs / "supernodes" / f"{s}.key"),
                           "--state-dir", str(self.root / "state" / s), "--flwr-home",
                           str(self.root / f"flwr-{s}"), *extra)

    def start_clients(self, extra: list[str], suffix: str = "") -> None:
        self.clients = [self._start_client(s, extra, s + suffix) for s in self.scenarios]

    def _activations(self) -> int:
        return (self.logs / "server.log").read_text(errors="replace").count("[Fleet.ActivateNode] Activated")

    def restart_clients(self, extra: list[str], timeout: float = ACTIVATION_WAIT_S) -> None:
        """The same nodes (same keys) again, started with ``extra`` options, once the SuperLink
        has let each in. A SuperNode that did not deactivate (killed before its graceful exit
        ended; pfms-client's own second SIGTERM did that until pfms_client.procs spared it)
        counts as online until its heartbeats run out, and the SuperLink refuses a new
        SuperNode with its key ('Failed to activate SuperNode', exit 305). Such a node is
        started again, up to ``timeout`` seconds, instead of leaving the next run waiting
        for it forever."""
        for proc in self.clients:
            stop_tree(proc)
            self.procs.remove(proc)
        before = self._activations()
        self.start_clients(extra, "-restarted")
        deadline = time.monotonic() + timeout
        while self._activations() < before + len(self.clients):
            for i, proc in enumerate(self.clients):
                if proc.poll() is not None:  # refused: try again
                    self.procs.remove(proc)
                    self.clients[i] = self._start_client(self.scenarios[i], extra,
                                                         f"{self.scenarios[i]}-restarted")
            if time.monotonic() > deadline:
                raise RuntimeError(f"restarted nodes not let in by the SuperLink within {timeout:g} s; logs in "
                                   f"{self.logs}")
            time.sleep(1.0)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_tree(proc)

    def run(self, app: Path, run_config: str, name: str, timeout: float) -> tuple[float, float, str]:
        """(seconds from [ROUND 1/R] to the end of flwr run, total seconds, log) of one run."""
        t0 = time.monotonic()
        first_round = None
        proc = subprocess.Popen([str(Path(sys.executable).parent / "flwr"), "run", str(app), "bench", "--stream",
                                 "--run-config", run_config], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        out = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.append(line)
                if first_round is None and "[ROUND 1/" in line:
                    first_round = time.monotonic()
                if time.monotonic() - t0 > timeout:
                    break
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        end = time.monotonic()
        log = "".join(out)
        (self.logs / f"run-{name}.log").write_text(log)
        status = self.flwr("ls", "bench", "--format", "json").stdout
        if proc.returncode != 0 or first_round is None or "finished:failed" in log:
            raise RuntimeError(f"{name}: flwr run exited {proc.returncode}\n{log[-3000:]}\n{status[-1000:]}")
        return end - first_round, end - t0, log


def read_seconds(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def breakdown(rows: list[dict], rounds: int) -> tuple[dict[str, float], float, str]:
    """(mean client's seconds per round by part, the slowest client's train+evaluate per round, schedule)."""
    per_round: dict[int, dict[str, dict[str, float]]] = {}
    for r in rows:
        parts = per_round.setdefault(int(r["round"]), {}).setdefault(r["scenario"], dict.fromkeys(PARTS, 0.0))
        for part in PARTS:
            parts[part] += float(r[part] or 0.0)
    means = {part: sum(sum(sc[part] for sc in by.values()) / len(by) for by in per_round.values()) / rounds
             for part in PARTS}
    compute = sum(max(sc["train"] + sc["evaluate"] for sc in by.values()) for by in per_round.values()) / rounds
    evaluated_early = any(r["phase"] == "evaluate" and int(r["round"]) < rounds for r in rows)
    return means, compute, "separate" if evaluated_early else "merged"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 1 <= args.nodes <= len(SCENARIOS):
        print(f"bench_deploy: --nodes {args.nodes}: expected 1-{len(SCENARIOS)}", file=sys.stderr)
        return 2
    scenarios = SCENARIOS[:args.nodes]
    root = Path(tempfile.mkdtemp(prefix="pfms-bench-deploy-"))
    dep = Deployment(root, scenarios, args.client_args.split())
    t0 = time.monotonic()
    generate(dep.data, scenarios, rows_train=args.rows_train, rows_test=args.rows_test, seed=2024)
    print(f"data_s={time.monotonic() - t0:.1f}", flush=True)
    try:
        dep.start()
        overrides = " ".join([f"num_rounds={args.rounds}", "run_name=bench", "server.plot=false",
                              f"dataset.scenarios=[{','.join(scenarios)}]", args.overrides]).strip()
        pfms_s, pfms_total, _ = dep.run(REPO, f"overrides='{overrides}'", "pfms", args.timeout)
        run_dir = root / "home" / "runs" / "bench"
        rows = read_seconds(run_dir / "client_seconds.csv")
        means, compute, schedule = breakdown(rows, args.rounds)
        uploaded = json.loads((run_dir / "train_log.json").read_text())
        floats = max(int(r["upload_bytes"]) for r in uploaded) // 4
        cfg_text = (run_dir / "config.yaml").read_text()
        poll = 0.0
        for line in cfg_text.splitlines():
            if line.strip().startswith("poll_interval:"):
                poll = float(line.split(":", 1)[1])
        threads = sorted({r["threads"] for r in rows if r["threads"]})
        pfms_round = pfms_s / args.rounds
        print(f"nodes={args.nodes}", f"rounds={args.rounds}", f"schedule={schedule}", f"poll_interval={poll:g}",
              f"threads={','.join(threads) or 'torch-default'}", f"payload_floats={floats}", sep="\n", flush=True)
        print(f"pfms_run_s={pfms_total:.1f}", f"pfms_round_s={pfms_round:.2f}", f"compute_round_s={compute:.2f}",
              sep="\n", flush=True)
        for part in PARTS:
            print(f"pfms_{part}_s={means[part]:.2f}")
        print(f"pfms_waiting_s={pfms_round - sum(means.values()):.2f}", flush=True)
        if args.skip_floor:
            return 0
        floor_cfg = (f"rounds={args.rounds} nodes={args.nodes} schedule='{schedule}' payload-floats={floats} "
                     f"poll-interval={poll}")
        # Flower's floor is measured with Flower's own SuperExec (a fresh Python per message),
        # not with pfms-client's forking one, which would also make the no-op app cheaper.
        dep.restart_clients([*args.client_args.split(), "--executor", "subprocess"])
        floor_s, floor_total, _ = dep.run(NOOP_APP, floor_cfg, "floor", args.timeout)
        floor_round = floor_s / args.rounds
        print(f"floor_run_s={floor_total:.1f}", f"floor_round_s={floor_round:.2f}",
              f"ratio={pfms_round / (floor_round + compute):.2f}", sep="\n", flush=True)
    finally:
        dep.stop()
        if args.keep:
            print(f"kept={root}")
        else:
            import shutil  # noqa: PLC0415

            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
