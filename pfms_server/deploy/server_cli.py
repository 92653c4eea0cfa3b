"""``pfms-server``: the Flower SuperLink of a pfms deployment, TLS on by default.

Since Flower 1.40 one HTTPS port serves the Fleet API (SuperNodes), the Control
API (``flwr run``) and the ServerApp runtime. The SuperLink runs ServerApps in
subprocesses of this environment (runtime dependency installation off).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pfms_client.procs import bin_dir, flower_env, run_foreground

CERT_FILES = ("ca.crt", "server.crt", "server.key")


def build_command(args: argparse.Namespace) -> list[str]:
    cmd = [str(bin_dir() / "flower-superlink"), "--host", args.host, "--port", str(args.port),
           "--disable-runtime-dependency-installation", "--isolation", "subprocess"]
    if args.insecure:
        cmd.append("--insecure")
    else:
        certs = Path(args.certs_dir)
        cmd += ["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.crt"),
                "--ssl-keyfile", str(certs / "server.key")]
    if args.enable_supernode_auth:
        cmd.append("--enable-supernode-auth")
    if args.database:
        cmd += ["--database", str(args.database)]
    if args.log_file:
        cmd += ["--log-file", str(args.log_file)]
    return cmd


def check(args: argparse.Namespace) -> str | None:
    """The first thing that would make the SuperLink fail, as a message.

    pfms-server has no run config: the run's values come with `flwr run` and the
    ServerApp checks them (pfms_server.config_check) before it sends a message."""
    if not 0 < args.port < 65536:
        return f"--port {args.port} is not a TCP port"
    if args.insecure and args.enable_supernode_auth:
        return "--enable-supernode-auth needs TLS; drop --insecure"
    for option, value in (("--log-file", args.log_file), ("--database", args.database)):
        if value and not Path(value).expanduser().resolve().parent.is_dir():
            return f"{option} {value}: folder {Path(value).expanduser().resolve().parent} does not exist"
    if not args.insecure:
        certs = Path(args.certs_dir)
        missing = [str(certs / f) for f in CERT_FILES if not (certs / f).is_file()]
        if missing:
            return f"missing certificate file(s): {', '.join(missing)} (create them with `pfms-certs --out {certs}`)"
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfms-server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: 0.0.0.0)")
    p.add_argument("--port", type=int, default=9092, help="HTTPS port for SuperNodes and `flwr run` (default: 9092)")
    p.add_argument("--certs-dir", default="certs", help="folder with ca.crt, server.crt, server.key (default: ./certs)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP, no TLS: local experiments only")
    p.add_argument("--enable-supernode-auth", action="store_true",
                   help="only SuperNodes whose public key was registered (`flwr supernode register`) may join")
    p.add_argument("--database", default=None, help="SuperLink state database file (default: in memory)")
    p.add_argument("--log-file", default=None, help="also write the SuperLink log to this file")
    p.add_argument("--flwr-home", default=None, help="FLWR_HOME for the SuperLink (default: Flower's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if (problem := check(args)) is not None:
        print(f"pfms-server: {problem}", file=sys.stderr)
        return 2
    if args.insecure:
        print("pfms-server: WARNING --insecure: traffic is unencrypted and any SuperNode may join; "
              "use it for local experiments only", file=sys.stderr)
    env = flower_env({"FLWR_HOME": str(Path(args.flwr_home).resolve())} if args.flwr_home else None)
    return run_foreground(build_command(args), env)


if __name__ == "__main__":
    sys.exit(main())
