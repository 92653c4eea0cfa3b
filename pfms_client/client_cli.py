"""``pfms-client``: a Flower SuperNode bound to one scenario's private data.

Before connecting it validates the data folder with the same schema the run
will use (a bad CSV fails here, naming file, line and column), checks the
certificate files and that the SuperLink answers; then it runs
``flower-supernode`` with node config ``scenario``, ``data-path`` and
``state-dir`` so the ClientApp serves that scenario and keeps its local model
state on disk across restarts.

Torch threads: by default each ClientApp takes the cores this process may use
divided by the pfms-client nodes running on this host (``--threads auto``; the
nodes are counted in a registry folder at every message, see
pfms_client.threads); ``--nodes-per-host`` fixes the divisor, ``--threads N`` the
number, and ``train.num_threads`` in the run config overrides both. The choice is
logged in one line at start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .procs import bin_dir, flower_env, free_port, parse_address, reachable, run_foreground
from .threads import AUTO, choose, parse_setting, register, registry_dir, unregister


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfms-client", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", required=True, help="scenario id this node serves (must be in dataset.scenarios)")
    p.add_argument("--data", required=True, help="dataset root: holds this scenario's folder (or file)")
    p.add_argument("--superlink", required=True, help="SuperLink address HOST:PORT")
    p.add_argument("--root-certificates", default="certs/ca.crt",
                   help="CA certificate that signed the SuperLink's certificate (default: certs/ca.crt)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP, no TLS: local experiments only")
    p.add_argument("--auth-key", default=None,
                   help="this SuperNode's private key (OpenSSH, EC) when the SuperLink requires node authentication")
    p.add_argument("--state-dir", default=None,
                   help="keep the scenario's local model state here so it survives a node restart")
    p.add_argument("--checkpoint-dir", default=None, help="write the final personalized model here")
    p.add_argument("--overrides", default="",
                   help="Hydra overrides the run will use for the dataset (e.g. 'dataset=tenrec'), for validation")
    p.add_argument("--runtime-port", type=int, default=0,
                   help="local port of the SuperNode's ClientApp runtime (default: a free one)")
    p.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds to wait for the SuperLink to answer before giving up (default: 30)")
    p.add_argument("--flwr-home", default=None, help="FLWR_HOME for the SuperNode (default: Flower's)")
    p.add_argument("--threads", default=AUTO,
                   help="torch threads per ClientApp: 'auto' (default: usable cores // nodes on this host) or N; "
                        "train.num_threads in the run config overrides it")
    p.add_argument("--nodes-per-host", type=int, default=0,
                   help="with --threads auto: divide the cores by this many nodes (default 0: count the "
                        "pfms-client nodes running on this host)")
    p.add_argument("--executor", choices=["fork", "subprocess"], default="fork",
                   help="how ClientApp processes start: 'fork' (default) from a parent that imported torch and "
                        "the other libraries once (pfms_client.prefork); 'subprocess': Flower's own SuperExec, "
                        "a fresh Python per message")
    p.add_argument("--node-registry", default=None,
                   help="folder where pfms-client nodes on this host register (default: $PFMS_NODE_REGISTRY or "
                        "a per-user temp folder)")
    return p


def validate_data(scenario: str, data: Path, overrides: str) -> None:
    """Prepare the scenario's store exactly as the ClientApp will open it (validating every
    row; a no-op when the store is current) and map it; raises on any problem. Nothing is
    read into memory, whatever the scenario's size."""
    from omegaconf import OmegaConf

    from .config import load_config
    from .data import prepare_scenario
    from .data.settings import DatasetSettings
    from .data.store import mapped_rows, read_manifest

    cfg = load_config(overrides)
    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    if scenario not in ds["scenarios"]:
        raise ValueError(f"scenario {scenario!r} is not in dataset.scenarios {ds['scenarios']}")
    ds["root"], ds["generator"] = str(data), None  # a deployed node never generates data
    # The store's arrays mapped as the ClientApp maps them, but without torch: importing it
    # here cost every pfms-client start 3-9 s of CPU (py-spy of the deployment test).
    folder = prepare_scenario(DatasetSettings.from_config(OmegaConf.create(ds)), scenario)
    manifest = read_manifest(folder)
    rows = {split: mapped_rows(folder, split, manifest) for split in ("train", "val", "test")}
    print(f"pfms-client: {scenario}: {rows['train']} train / {rows['val']} val / {rows['test']} test rows OK",
          flush=True)


def node_config(args: argparse.Namespace, data: Path, registry: Path | None = None) -> str:
    items = {"scenario": args.scenario, "data-path": str(data), "threads": str(args.threads).lower(),
             "nodes-per-host": str(args.nodes_per_host)}
    if registry is not None:
        items["node-registry"] = str(registry)
    if args.state_dir:
        items["state-dir"] = str(Path(args.state_dir).resolve())
    if args.checkpoint_dir:
        items["checkpoint-dir"] = str(Path(args.checkpoint_dir).resolve())
    for key, value in items.items():
        if any(c in value for c in "\"' "):
            raise ValueError(f"{key} {value!r}: quotes and spaces are not supported in node config values")
    return " ".join(f'{k}="{v}"' for k, v in items.items())


def prefork_command(runtime_port: int):
    """The SuperExec beside a ``--isolation process`` SuperNode: pfms_client.prefork, on the
    SuperNode's local Runtime API (plain HTTP on loopback, as Flower's own SuperExec uses it)."""
    def command(supernode_pid: int) -> list[str]:
        return [sys.executable, "-m", "pfms_client.prefork", "--runtime-api-address", f"127.0.0.1:{runtime_port}",
                "--insecure", "--parent-pid", str(supernode_pid)]
    return command


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        host, port = parse_address(args.superlink)
        data = Path(args.data).resolve()
        if not data.is_dir():
            raise ValueError(f"--data {data} is not a folder")
        if not args.insecure and not Path(args.root_certificates).is_file():
            raise ValueError(f"missing certificate {args.root_certificates} (or pass --insecure)")
        if args.auth_key and not Path(args.auth_key).is_file():
            raise ValueError(f"missing node key {args.auth_key}")
        parse_setting(args.threads)
        if args.nodes_per_host < 0:
            raise ValueError(f"--nodes-per-host {args.nodes_per_host}: expected an integer >= 0")
        validate_data(args.scenario, data, args.overrides)
        registry = Path(args.node_registry).resolve() if args.node_registry else registry_dir()
        config = node_config(args, data, registry)
    except ValueError as exc:  # DataValidationError and ConfigError are ValueErrors
        print(f"pfms-client: {exc}", file=sys.stderr)
        return 2
    if not reachable(host, port, args.connect_timeout):
        print(f"pfms-client: no SuperLink answers at {host}:{port} (waited {args.connect_timeout:g} s)",
              file=sys.stderr)
        return 3
    if args.insecure:
        print("pfms-client: WARNING --insecure: traffic to the SuperLink is unencrypted", file=sys.stderr)
    runtime_port = args.runtime_port or free_port()
    fork = args.executor == "fork"
    cmd = [str(bin_dir() / "flower-supernode"), "--superlink", args.superlink, "--node-config", config,
           "--isolation", "process" if fork else "subprocess", "--port", str(runtime_port)]
    cmd += ["--insecure"] if args.insecure else ["--root-certificates", str(Path(args.root_certificates).resolve())]
    if args.auth_key:
        cmd += ["--auth-supernode-private-key", str(Path(args.auth_key).resolve())]
    env = flower_env({"FLWR_HOME": str(Path(args.flwr_home).resolve())} if args.flwr_home else None)
    entry = register(registry)
    try:
        _, why = choose(args.threads, args.nodes_per_host, registry)
        print(f"pfms-client: {args.scenario}: {why}; recounted at every message, "
              "train.num_threads in the run config overrides it", flush=True)
        return run_foreground(cmd, env, prefork_command(runtime_port) if fork else None)
    finally:
        unregister(entry)


if __name__ == "__main__":
    sys.exit(main())
