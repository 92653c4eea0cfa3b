"""The server's aggregation math: pure functions of (state, uploads, sample counts).

One module per rule or step: ``pfmsmtrec`` (one PF-MSMTrec round, in the spec's
order), ``fedavg``, ``fedamp``, ``conflict`` (CAGrad / PCGrad on client updates),
``personalize`` (alpha by hypergradient), ``towers`` (beta-weighted task towers),
``embeddings`` (shared-id tables: count-weighted mean of the touched rows),
``state`` (per-scenario state, checkpointed to disk), ``validate`` (what a reply
must look like) and ``rules`` (``strategy.algorithm`` -> the rule).

numpy and scipy only: nothing here imports flwr, torch or the rest of
``pfms_server`` (an import-linter contract in pyproject.toml checks it). The one
outside name it uses is the template's naming contract, ``pfms_client.template``.
Names below are imported on first use, so ``import pfms_server.aggregation`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ALGORITHMS": "rules",
    "Rule": "rules",
    "make_rule": "rules",
    "Arrays": "state",
    "ScenarioState": "state",
    "ServerState": "state",
    "AggregationConfig": "pfmsmtrec",
    "aggregate_round": "pfmsmtrec",
    "hyperparams": "pfmsmtrec",
    "fedavg_round": "fedavg",
    "weighted_average": "fedavg",
    "FedAMPConfig": "fedamp",
    "fedamp_round": "fedamp",
    "coordinate": "conflict",
    "cagrad": "conflict",
    "pcgrad": "conflict",
    "HyperParam": "personalize",
    "personalized_next": "personalize",
    "tower_next": "towers",
    "touched_row_mean": "embeddings",
    "with_shared_embeddings": "embeddings",
    "touched_problems": "validate",
    "count_problems": "validate",
    "upload_problems": "validate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
