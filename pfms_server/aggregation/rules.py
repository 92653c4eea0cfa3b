"""The server's aggregation rule, chosen by ``strategy.algorithm``.

Every rule is a pure function (state, uploads, sample counts) -> next state; the
Strategy orchestrates rounds the same way for all of them, so a baseline is a
config in conf/strategy/, not another Strategy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pfms_client.template import shares_embeddings

from .embeddings import with_shared_embeddings
from .fedamp import FedAMPConfig, fedamp_round
from .fedavg import fedavg_round
from .pfmsmtrec import AggregationConfig, aggregate_round
from .state import Arrays, ServerState

Aggregate = Callable[[ServerState, Mapping[str, Arrays], Mapping[str, int]], ServerState]
ALGORITHMS = ("pfmsmtrec", "fedavg", "fedamp", "none")


@dataclass(frozen=True)
class Rule:
    name: str
    aggregate: Aggregate
    description: str


def _none(state: ServerState, uploads: Mapping[str, Arrays], counts: Mapping[str, int]) -> ServerState:
    """Local-only training: nothing to aggregate."""
    new = copy.deepcopy(state)
    for k in uploads:
        new.own(k).num_examples = int(counts[k])
    new.round = state.round + 1
    return new


# Rules that take strategy.shared_embeddings (the shared tables are aggregated beside them).
SHARED_EMBEDDING_RULES = ("pfmsmtrec", "fedavg", "none")


def make_rule(strategy: Mapping[str, Any], seed: int) -> Rule:
    """The rule of ``strategy.algorithm``; with strategy.shared_embeddings on, the shared-id
    tables are aggregated by the touched-row mean beside it (``embeddings``)."""
    rule = _base_rule(strategy, seed)
    switch = strategy.get("shared_embeddings")
    if switch is not None and bool(switch["enabled"]) and rule.name not in SHARED_EMBEDDING_RULES:
        raise ValueError(f"strategy.shared_embeddings.enabled=true: strategy.algorithm={rule.name!r} does not "
                         f"take shared-id embeddings; use one of {list(SHARED_EMBEDDING_RULES)}")
    if not shares_embeddings(strategy):
        return rule
    capped = switch.get("upload_cap") is not None
    step = float(switch.get("server_lr", 1.0))
    return Rule(rule.name, with_shared_embeddings(rule.aggregate, capped=capped, step=step),
                f"{rule.description} | shared-id embeddings: {int(switch['buckets'])} buckets, "
                + (f"upload cap {float(switch['upload_cap']):g}, rate-weighted mean" if capped else "touched-row mean")
                + (f", server step {step:g}" if step != 1.0 else ""))


def _base_rule(strategy: Mapping[str, Any], seed: int) -> Rule:
    algorithm = str(strategy["algorithm"])
    if algorithm == "pfmsmtrec":
        agg = AggregationConfig.from_config(strategy, seed=seed)
        return Rule(algorithm, lambda st, up, n: aggregate_round(st, up, n, agg),
                    f"conflict: {agg.conflict} (c={agg.c:.2f}) | alpha: {agg.alpha_mode} | towers: {agg.tower_mode} "
                    f"| FedBN: {agg.fedbn}")
    if algorithm == "fedavg":
        return Rule(algorithm, fedavg_round, f"sample-weighted mean of every shared tensor | FedBN: {strategy['fedbn']}")
    if algorithm == "fedamp":
        amp = FedAMPConfig.from_config(strategy)
        return Rule(algorithm, lambda st, up, n: fedamp_round(st, up, n, amp),
                    f"similarity-weighted (self weight {amp.self_weight}, sigma {amp.sigma})")
    if algorithm == "none":
        return Rule(algorithm, _none, "local training only, nothing shared")
    raise ValueError(f"strategy.algorithm={algorithm!r}: expected one of {list(ALGORITHMS)}")
