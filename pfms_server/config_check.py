"""The server's config rules, and ``load_run_config``: the config of a run, every value checked.

pfms_client.config.load_config checks what the client package reads; this adds
the keys the server owns (``SERVER_OWNED``: the aggregation rule and its
switches, participation, the round timeout) with their choices taken from the
server's own constants, plus what depends on the entry point: the Flower
ServerApp cannot run the pooled-rows ``centralized`` reference, and a ``resume``
folder must hold a server checkpoint. pfms-run calls load_run_config before it
starts any process, pfms-compare for every arm before the first run, and the
ServerApp before it sends any message; a bad value is one ConfigError line
naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pfms_client.config import ConfigError, load_config
from pfms_client.config_check import (
    SERVER_OWNED,
    CrossCheck,
    Rule,
    boolean,
    check_config,
    get,
    has,
    integer,
    number,
    one_of,
    show,
)

from .aggregation.pfmsmtrec import AGGREGATED_PARTS, ALPHA_MODES, CONFLICT_METHODS, TOWER_MODES
from .aggregation.rules import ALGORITHMS, make_rule

CENTRALIZED = "centralized"  # strategy.algorithm of the pooled-rows reference (pfms-compare runs it, no Flower)
CHECKPOINT = "server_state/state.json"  # what a resumable run folder holds (server_app.resume_state)


def _hyper(prefix: str) -> dict[str, Rule]:
    """lr / momentum / weight_decay of a learned personalization weight (personalize.sgd_step)."""
    return {
        f"{prefix}.lr": number(0).optional(),
        f"{prefix}.momentum": number(0, 1, hi_open=True).optional(),
        f"{prefix}.weight_decay": number(0).optional(),
    }


SERVER_RULES: dict[str, Rule] = {
    "strategy.algorithm": one_of((*ALGORITHMS, CENTRALIZED)),
    # pfmsmtrec only (required then: see _algorithm_has_its_nodes)
    "strategy.conflict.method": one_of(CONFLICT_METHODS).optional(),
    "strategy.conflict.c": number(0).optional(),
    "strategy.personalization.mode": one_of(ALPHA_MODES).optional(),
    "strategy.personalization.alpha_init": number(0, 1).optional(),
    "strategy.personalization.alpha_fixed": number(0, 1).optional(),
    "strategy.personalization.per_expert": boolean().optional(),
    **_hyper("strategy.personalization"),
    "strategy.towers.mode": one_of(TOWER_MODES).optional(),
    "strategy.towers.beta_init": number(0, 1).optional(),
    "strategy.towers.learn_beta": boolean().optional(),
    **_hyper("strategy.towers"),
    # fedamp only
    "strategy.fedamp.self_weight": number(0, 1).optional(),
    "strategy.fedamp.sigma": number(0).optional(),
    # every strategy
    "strategy.participation.min_available_nodes": integer(1, nullable=True),  # null = every scenario
    "strategy.participation.min_train_nodes": integer(1),
    "strategy.participation.fraction_train": number(0, 1, lo_open=True),
    "server.round_timeout": number(0, lo_open=True),
    "server.poll_interval": number(0, 60),  # 0 = the Grid's own send_and_receive
    "simulation.client_cpus": integer(1),  # pfms-run's client-resources-num-cpus
}

# The nodes an aggregation rule reads, all of whose keys it then needs.
ALGORITHM_NODES = {
    "pfmsmtrec": ("strategy.conflict", "strategy.personalization", "strategy.towers"),
    "fedamp": ("strategy.fedamp",),
}


def _algorithm_has_its_nodes(cfg: Mapping[str, Any]) -> str | None:
    algorithm = get(cfg, "strategy.algorithm")
    for node in ALGORITHM_NODES.get(algorithm, ()):  # type: ignore[arg-type]
        for key in SERVER_RULES:
            if key.startswith(node + ".") and not has(cfg, key):
                return f"strategy.algorithm={algorithm!r} needs {key} (missing)"
    return None


def _participation_fits_the_scenarios(cfg: Mapping[str, Any]) -> str | None:
    k = len(get(cfg, "dataset.scenarios"))
    for name in ("min_available_nodes", "min_train_nodes"):
        value = get(cfg, f"strategy.participation.{name}")
        if value is not None and value > k:
            return (f"strategy.participation.{name}={value}: expected an integer in [1, {k}] "
                    f"(dataset.scenarios has {k}, one node each)")
    return None


def _flower_algorithm(cfg: Mapping[str, Any]) -> str | None:
    algorithm = get(cfg, "strategy.algorithm")
    if algorithm == CENTRALIZED:
        return (f"strategy.algorithm={algorithm!r}: the pooled-rows reference runs without Flower (pfms-compare, "
                f"or python -m pfms_server.experiments.centralized); a Flower run takes one of {list(ALGORITHMS)}")
    return None


def _centralized_has_no_shared_embeddings(cfg: Mapping[str, Any]) -> str | None:
    if get(cfg, "strategy.algorithm") == CENTRALIZED and get(cfg, "strategy.shared_embeddings.enabled", False) is True:
        return ("strategy.shared_embeddings.enabled=true: the pooled-rows centralized reference federates "
                "nothing, so it has no shared-id embeddings; set it false for this arm")
    return None


def _pfmsmtrec_shares_what_it_aggregates(cfg: Mapping[str, Any]) -> str | None:
    if get(cfg, "strategy.algorithm") != "pfmsmtrec":
        return None
    extra = [str(s) for s in get(cfg, "strategy.share") or [] if str(s) not in AGGREGATED_PARTS]
    if extra:
        return (f"strategy.share={[str(s) for s in get(cfg, 'strategy.share')]}: the pfmsmtrec rule aggregates only "
                f"{list(AGGREGATED_PARTS)}; {extra} would be overwritten with the server's stale copy every round "
                "(use strategy=fedavg and its family to share those)")
    return None


def _resume_has_a_checkpoint(cfg: Mapping[str, Any]) -> str | None:
    resume = get(cfg, "resume")
    if resume is not None and not (Path(str(resume)).expanduser() / CHECKPOINT).is_file():
        return f"resume={show(resume)}: no server checkpoint ({CHECKPOINT}) in that folder"
    return None


def _no_resume(cfg: Mapping[str, Any]) -> str | None:
    resume = get(cfg, "resume")
    if resume is not None:
        return (f"resume={show(resume)}: pfms-compare gives every run its own folder; continue an interrupted "
                "comparison with --out <its folder> instead")
    return None


SERVER_CHECKS: tuple[CrossCheck, ...] = (_algorithm_has_its_nodes, _participation_fits_the_scenarios,
                                         _centralized_has_no_shared_embeddings, _pfmsmtrec_shares_what_it_aggregates)
FLOWER_CHECKS: tuple[CrossCheck, ...] = (_flower_algorithm, _resume_has_a_checkpoint)  # pfms-run, the ServerApp
COMPARE_CHECKS: tuple[CrossCheck, ...] = (_no_resume,)  # pfms-compare


def check_server_config(cfg: DictConfig, *, flower: bool = True) -> None:
    """The server's keys of a config load_config already checked; ``flower``: a Flower run
    (pfms-run, the ServerApp) rather than a pfms-compare arm, which may be ``centralized``."""
    check_config(cfg, SERVER_RULES, (*SERVER_CHECKS, *(FLOWER_CHECKS if flower else COMPARE_CHECKS)),
                 owned=SERVER_OWNED)
    if str(cfg.strategy.algorithm) != CENTRALIZED:  # build the rule: what it checks, it checks here
        try:
            make_rule(cfg.strategy, seed=int(cfg.seed))
        except (ValueError, KeyError) as exc:
            raise ConfigError(" ".join(str(exc).split())) from exc


def load_run_config(overrides: str | Sequence[str] | None = None, *, flower: bool = True) -> DictConfig:
    """load_config plus the server's checks: every value the run uses, or a ConfigError naming the key."""
    cfg = load_config(overrides)
    check_server_config(cfg, flower=flower)
    return cfg
