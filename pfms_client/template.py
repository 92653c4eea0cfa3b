"""The parameter template: which expert group every named tensor belongs to.

The template is the contract between the clients and the server. The MMoE names
its modules so that a tensor's name alone says its group; the server reads those
names and never imports the model. Pure Python, no torch, so the server can use it.

Names (``t`` = task index, ``i`` = expert index):
    experts.global.<i>.*      G: global-shared experts (uploaded, FedAvg)
    experts.scenario.<i>.*    S: scenario experts (uploaded, conflict-coordinated)
    experts.task.<t>.<i>.*    T_t: task-t experts (never uploaded)
    towers.<t>.*              task-t tower (uploaded unless towers are local)
    gates.<t>.*, embedding.*, numeric.*   local under PF-MSMTrec
    shared_embedding.<field>.weight       the hashed table of a field whose ids mean the same in
                                          every scenario (strategy.shared_embeddings: off by default)
Any name with a ``bn`` component is a BatchNorm tensor (kept local under FedBN; with
``strategy.fedbn: stats`` only its running statistics are).
What a strategy uploads is ``strategy.share`` (PF-MSMTrec: G, S and towers; the
FedAvg-family baselines also share task experts, gates and the numeric layer).
Embeddings stay local everywhere (each scenario indexes its own ids) unless
``strategy.shared_embeddings.enabled``: then the fields a dataset declares in
``schema.shared_fields`` are hashed into one common table per field, which a node
receives whole and answers with the rows it touched only
(``shared_embedding.<field>.rows`` / ``.counts`` / ``.values``, see
``pfms_client.shared_embedding``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Mapping


class Group(str, Enum):
    GLOBAL = "global"
    SCENARIO = "scenario"
    TASK = "task"
    TOWER = "tower"
    LOCAL = "local"
    SHARED_EMBEDDING = "shared_embedding"  # hashed tables of shared-id fields (touched rows only)


@dataclass(frozen=True)
class TensorRole:
    """What the name of one tensor says about it."""

    group: Group
    unit: str  # the expert or tower the tensor belongs to, e.g. "experts.scenario.1"
    task: int | None  # task index for task experts and towers
    is_bn: bool
    layer: str  # the module the tensor belongs to (name without its last part)


SHARED_EMBEDDING_PREFIX = "shared_embedding"
# strategy.shared_embeddings.residual: the local rows added to the shared ones (never uploaded)
SHARED_RESIDUAL = "shared_residual"
# What a node answers for one shared table: the touched row numbers, how many trained rows
# used each (>= 1) and those rows' values (the table's dtype). The two integer parts travel in
# the smallest unsigned type that holds them exactly (``unsigned_for``): rows in the one that
# indexes the whole table (both sides know the table, so that type is fixed), counts in the
# one that holds the upload's largest count. A touched row of a default 16,385-row, 8-wide
# float32 table then costs 2 + 2 + 32 bytes instead of int64's 8 + 8 + 32: 36 bytes, not 48.
TOUCHED_PARTS = ("rows", "counts", "values")
# ``strategy.shared_embeddings.values: float16-delta`` sends, instead of ``values``, each
# touched row's change this round (its value minus the row as the node received it) as
# float16: 16 bytes instead of 32 for an 8-wide row. The server adds it to the row it sent.
# A reply names the part it carries, so the server reads either.
DELTA_PART = "deltas"
VALUE_ENCODINGS = ("float32", "float16-delta")
UNSIGNED_TYPES = ("uint8", "uint16", "uint32", "uint64")


def unsigned_for(largest: int) -> str:
    """The smallest numpy unsigned integer type (by name) that holds 0..``largest``."""
    for name in UNSIGNED_TYPES:
        if 0 <= largest < 2 ** int(name[4:]):  # "uint16" -> 16 bits
            return name
    raise ValueError(f"{largest}: not an integer in [0, 2**64)")


def shared_table_name(field: str) -> str:
    return f"{SHARED_EMBEDDING_PREFIX}.{field}.weight"


def touched_names(table: str) -> dict[str, str]:
    """The names of a shared table's touched-row upload, by part (rows, counts, values, and
    deltas, which a float16-delta reply carries instead of values)."""
    unit = table.rpartition(".")[0]
    return {part: f"{unit}.{part}" for part in (*TOUCHED_PARTS, DELTA_PART)}


def is_shared_table(name: str) -> bool:
    return name.startswith(SHARED_EMBEDDING_PREFIX + ".") and name.endswith(".weight") and name.count(".") == 2


def classify(name: str) -> TensorRole:
    """Classify a tensor by its name; unknown prefixes are an error, not LOCAL."""
    parts = name.split(".")
    is_bn = "bn" in parts[:-1]
    layer = ".".join(parts[:-1])
    head = parts[0]
    if head == "experts" and len(parts) >= 3:
        kind = parts[1]
        if kind == "global" and parts[2].isdigit():
            return TensorRole(Group.GLOBAL, ".".join(parts[:3]), None, is_bn, layer)
        if kind == "scenario" and parts[2].isdigit():
            return TensorRole(Group.SCENARIO, ".".join(parts[:3]), None, is_bn, layer)
        if kind == "task" and len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
            return TensorRole(Group.TASK, ".".join(parts[:4]), int(parts[2]), is_bn, layer)
    elif head == "towers" and len(parts) >= 2 and parts[1].isdigit():
        return TensorRole(Group.TOWER, ".".join(parts[:2]), int(parts[1]), is_bn, layer)
    elif head == SHARED_EMBEDDING_PREFIX and len(parts) == 3 and parts[1]:
        unit = ".".join(parts[:2])
        return TensorRole(Group.SHARED_EMBEDDING, unit, None, False, unit)
    elif head in ("gates", "embedding", "numeric", SHARED_RESIDUAL):
        task = int(parts[1]) if head == "gates" and parts[1].isdigit() else None
        return TensorRole(Group.LOCAL, ".".join(parts[:2]), task, is_bn, layer)
    raise ValueError(f"tensor name {name!r} does not follow the parameter template")


# What a strategy may share, by name: the four template groups plus the local parts.
SHAREABLE = ("global", "scenario", "task", "tower", "gates", "numeric", "embedding")


def share_key(name: str) -> str:
    """The SHAREABLE entry a tensor falls under."""
    role = classify(name)
    return name.split(".")[0] if role.group is Group.LOCAL else role.group.value


def shared_parts(strategy: Mapping[str, Any]) -> frozenset[str]:
    """``strategy.share``, minus the towers when PF-MSMTrec keeps them local."""
    share = [str(s) for s in strategy["share"]]
    unknown = sorted(set(share) - set(SHAREABLE))
    if unknown:
        raise ValueError(f"strategy.share: unknown part(s) {unknown}; expected some of {list(SHAREABLE)}")
    towers = strategy.get("towers")
    if towers is not None and str(towers["mode"]) == "local":
        share = [s for s in share if s != "tower"]
    if shares_embeddings(strategy):
        share.append(SHARED_EMBEDDING_PREFIX)
    return frozenset(share)


def shares_embeddings(strategy: Mapping[str, Any]) -> bool:
    """Whether the shared-id tables travel: the switch is on and the rule aggregates something
    (local training, ``algorithm: none``, keeps even a hashed table on the node)."""
    switch = strategy.get("shared_embeddings")
    return bool(switch is not None and switch["enabled"]) and str(strategy.get("algorithm", "none")) != "none"


# ``strategy.fedbn``: true keeps every BatchNorm tensor on the node (the spec's FedBN); false
# uploads and averages them like any other weight (the spec's ablation); "stats" (beyond the
# paper; SiloBN, Andreux et al., 2020) keeps only the running statistics on the node and shares
# gamma and beta: a small scenario borrows the large ones' learned affine while still
# normalising with its own statistics, which averaged statistics miscalibrate.
FEDBN_MODES: tuple[bool | str, ...] = (True, False, "stats")
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def bn_stays_local(name: str, fedbn: bool | str) -> bool:
    """Whether ``strategy.fedbn`` keeps this BatchNorm tensor on the node."""
    if isinstance(fedbn, bool):
        return fedbn
    if fedbn == "stats":
        return name.rpartition(".")[2] in BN_STATISTICS
    raise ValueError(f"strategy.fedbn={fedbn!r}: expected true, false or stats")


def is_uploaded(name: str, *, fedbn: bool | str, share: Iterable[str]) -> bool:
    """Whether a client sends this tensor to the server (and receives it back)."""
    if classify(name).is_bn and bn_stays_local(name, fedbn):
        return False
    return share_key(name) in set(share)


def uploaded_names(names: Iterable[str], *, fedbn: bool | str, share: Iterable[str]) -> list[str]:
    share = frozenset(share)
    return [n for n in names if is_uploaded(n, fedbn=fedbn, share=share)]


@dataclass(frozen=True)
class ExpertTemplate:
    """How the M experts split into G, S and T_t, and which experts gate t mixes."""

    n_global: int
    n_scenario: int
    n_task: int  # per task
    num_tasks: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], num_tasks: int) -> "ExpertTemplate":
        unknown = set(cfg) - {"global", "scenario", "task"}
        if unknown:
            raise ValueError(f"model.template: unknown keys {sorted(unknown)}")
        tpl = cls(int(cfg["global"]), int(cfg["scenario"]), int(cfg["task"]), num_tasks)
        if min(tpl.n_global, tpl.n_scenario, tpl.n_task) < 0:
            raise ValueError(f"model.template: counts must be >= 0, got {dict(cfg)}")
        if tpl.n_global + tpl.n_scenario + tpl.n_task == 0:
            raise ValueError("model.template: at least one expert is needed")
        if num_tasks < 1:
            raise ValueError("at least one task is needed")
        return tpl

    @property
    def gate_width(self) -> int:
        """Experts one gate mixes: G + S + its own T_t."""
        return self.n_global + self.n_scenario + self.n_task
