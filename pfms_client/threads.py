"""How many torch threads a SuperNode's ClientApp uses: the host's cores shared among its nodes.

Several SuperNodes on one host each start ClientApp processes; with torch's
default intra-op threads (one per core) each of them would use every core and
they would fight over them (measured on 2 cores, 4 nodes: 63-65 samples/s per
node instead of 7,000-11,000 with one thread each). So by default a node takes
the cores its process may run on (its CPU affinity) divided by the number of
pfms-client nodes on this host, at least one.

The nodes on a host are counted from a registry folder: each ``pfms-client``
writes a file named by its pid (holding the process's start time, so a reused
pid does not count) while it runs, and a ClientApp counts the live entries at
every message, so the share follows nodes that join or leave. ``--nodes-per-host``
replaces the count, ``--threads N`` the whole rule, and ``train.num_threads`` in
the run config overrides both.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

AUTO = "auto"
REGISTRY_ENV = "PFMS_NODE_REGISTRY"


def usable_cores() -> int:
    """Cores this process may run on (its affinity), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def registry_dir() -> Path:
    """Where pfms-client nodes of this user on this host register: $PFMS_NODE_REGISTRY, else a per-user temp folder."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"pfms-nodes-{os.getuid()}"


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def register(registry: Path, pid: int | None = None) -> Path:
    """Enter a running node (default: this process) in the registry; returns its entry."""
    pid = os.getpid() if pid is None else pid
    registry.mkdir(parents=True, exist_ok=True)
    entry = registry / str(pid)
    entry.write_text(_start_time(pid) or "")
    return entry


def unregister(entry: Path) -> None:
    try:
        entry.unlink()
    except FileNotFoundError:
        pass


def live_nodes(registry: Path) -> int:
    """Registered nodes whose process still runs (same pid and start time), at least one."""
    count = 0
    try:
        entries = list(registry.iterdir())
    except OSError:
        return 1
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            started = entry.read_text().strip()
        except OSError:
            continue
        if started and _start_time(int(entry.name)) == started:
            count += 1
    return max(1, count)


def ray_actor_cpus() -> int | None:
    """The CPUs Ray assigned to this process's actor, or None outside a Ray actor.

    Flower's simulation runs each ClientApp in a Ray actor with ``client-resources``
    ``num-cpus`` (2 in Flower 1.42's default) but sets no thread count, so torch takes
    every core of the host in each actor: actors that Ray runs side by side (num-cpus
    below the host's cores) would oversubscribe it. Checked in a real pfms-run: the actor
    reads {'CPU': 2.0} with the default."""
    ray = sys.modules.get("ray")  # only where Flower's simulation imported it
    if ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001  a driver process, an older Ray: no assignment to follow
        return None
    return max(1, int(cpus)) if cpus else None


def parse_setting(value: object, what: str = "--threads") -> int | None:
    """``auto`` -> None (the rule above); a positive integer -> itself; anything else a ValueError."""
    text = str(value).strip().lower()
    if text == AUTO:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{what} {value!r}: expected 'auto' or an integer >= 1")
    return int(text)


def choose(setting: object = AUTO, nodes_per_host: object = 0, registry: Path | None = None) -> tuple[int, str]:
    """(threads, one line saying why) for a node with this setting.

    ``nodes_per_host`` 0 means: count the live pfms-client nodes in ``registry``."""
    fixed = parse_setting(setting)
    if fixed is not None:
        return fixed, f"torch threads {fixed} (set with --threads)"
    cores = usable_cores()
    given = int(str(nodes_per_host) or 0)
    if given < 0:
        raise ValueError(f"--nodes-per-host {nodes_per_host!r}: expected an integer >= 0")
    if given:
        nodes, source = given, "--nodes-per-host"
    else:
        nodes, source = live_nodes(registry or registry_dir()), f"pfms-client nodes running in {registry or registry_dir()}"
    threads = max(1, cores // nodes)
    return threads, f"torch threads {threads} = {cores} usable cores // {nodes} node(s) on this host ({source})"
