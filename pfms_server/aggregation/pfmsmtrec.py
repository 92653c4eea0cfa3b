"""One PF-MSMTrec aggregation round as a pure function of (state, uploads).

Order (spec, "Per round" step 3): hypergradient steps on alpha and beta with
this round's local tensors, FedAvg on G, conflict coordination + personalized
aggregation on S, tower aggregation; BN tensors only appear here in the no-FedBN
ablation, where they are sample-weighted averages like any other weight.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from pfms_client.template import Group, classify

from .conflict import coordinate
from .fedavg import average
from .personalize import HyperParam, hypergradient, personalized_next, sgd_step
from .state import Arrays, ServerState
from .towers import tower_next

CONFLICT_METHODS = ("cagrad", "pcgrad", "mean")
ALPHA_MODES = ("learned", "fixed")
TOWER_MODES = ("attention", "fedavg", "local")
# The strategy.share parts this round aggregates (G by FedAvg, S by conflict coordination,
# towers by attention); anything else a client uploaded would come back as the server's
# stale copy.
AGGREGATED_PARTS = ("global", "scenario", "tower")


@dataclass(frozen=True)
class HyperOpt:
    lr: float
    momentum: float
    weight_decay: float


@dataclass(frozen=True)
class AggregationConfig:
    fedbn: bool | str  # true, false or "stats" (template.FEDBN_MODES)
    conflict: str
    c: float
    alpha_mode: str
    alpha_init: float
    alpha_fixed: float
    alpha_per_expert: bool
    alpha_opt: HyperOpt
    tower_mode: str
    beta_init: float
    learn_beta: bool
    beta_opt: HyperOpt
    seed: int

    @classmethod
    def from_config(cls, s: Mapping[str, Any], seed: int) -> "AggregationConfig":
        p, t = s["personalization"], s["towers"]
        cfg = cls(
            fedbn=s["fedbn"] if isinstance(s["fedbn"], str) else bool(s["fedbn"]),
            conflict=str(s["conflict"]["method"]),
            c=float(s["conflict"]["c"]),
            alpha_mode=str(p["mode"]),
            alpha_init=float(p["alpha_init"]),
            alpha_fixed=float(p["alpha_fixed"]),
            alpha_per_expert=bool(p["per_expert"]),
            alpha_opt=HyperOpt(float(p["lr"]), float(p["momentum"]), float(p["weight_decay"])),
            tower_mode=str(t["mode"]),
            beta_init=float(t["beta_init"]),
            learn_beta=bool(t["learn_beta"]),
            beta_opt=HyperOpt(float(t["lr"]), float(t["momentum"]), float(t["weight_decay"])),
            seed=int(seed),
        )
        for key, value, valid in (
            ("strategy.conflict.method", cfg.conflict, CONFLICT_METHODS),
            ("strategy.personalization.mode", cfg.alpha_mode, ALPHA_MODES),
            ("strategy.towers.mode", cfg.tower_mode, TOWER_MODES),
        ):
            if value not in valid:
                raise ValueError(f"{key}={value!r}: expected one of {list(valid)}")
        return cfg

    def alpha_start(self, n_experts: int) -> np.ndarray:
        value = self.alpha_fixed if self.alpha_mode == "fixed" else self.alpha_init
        return np.full(n_experts, value) if self.alpha_per_expert else np.array(value)


def expert_units(names: list[str]) -> dict[str, list[str]]:
    """Scenario-expert unit -> its non-BN tensor names, in a stable order."""
    units: dict[str, list[str]] = {}
    for n in sorted(names):
        role = classify(n)
        if role.group is Group.SCENARIO and not role.is_bn:
            units.setdefault(role.unit, []).append(n)
    return units


def flat(arrays: Arrays, names: list[str]) -> np.ndarray:
    return np.concatenate([arrays[n].astype(np.float64).ravel() for n in names])


def unflat(vector: np.ndarray, like: Arrays, names: list[str]) -> Arrays:
    out, pos = {}, 0
    for n in names:
        size = like[n].size
        out[n] = vector[pos : pos + size].reshape(like[n].shape).astype(like[n].dtype)
        pos += size
    return out


def aggregate_round(
    state: ServerState, uploads: Mapping[str, Arrays], num_examples: Mapping[str, int], cfg: AggregationConfig
) -> ServerState:
    """Return the next state; ``uploads`` maps scenario -> its trained tensors."""
    new = copy.deepcopy(state)
    scen = sorted(uploads)  # a fixed order keeps CAGrad/PCGrad deterministic
    if not scen:
        return new
    names = sorted(uploads[scen[0]])
    units = expert_units(names)
    sc_states = {
        k: new.scenario(k, cfg.alpha_start(len(units)), cfg.beta_init) for k in scen
    }
    sent = {k: new.arrays_for(k) for k in scen}
    local = {k: uploads[k] for k in scen}
    weights = np.array([float(num_examples[k]) for k in scen])

    # Hypergradient steps: this round's local training tells how last round's
    # alpha_k * d (and beta_k * u) moved the loss.
    for k in scen:
        st = sc_states[k]
        if cfg.alpha_mode == "learned" and st.alpha_dir:
            grads = [
                hypergradient(flat(sent[k], units[u]), flat(local[k], units[u]), st.alpha_dir[u])
                for u in units if u in st.alpha_dir
            ]
            grad = np.array(grads) if cfg.alpha_per_expert else float(np.sum(grads))
            o = cfg.alpha_opt
            st.alpha = sgd_step(st.alpha, grad, o.lr, o.momentum, o.weight_decay)
        if cfg.tower_mode == "attention" and cfg.learn_beta and st.beta_dir:
            per_layer: dict[str, float] = {}
            for n, u in st.beta_dir.items():
                layer = classify(n).layer
                per_layer[layer] = per_layer.get(layer, 0.0) + hypergradient(
                    sent[k][n].astype(np.float64).ravel(), local[k][n].astype(np.float64).ravel(), u
                )
            o = cfg.beta_opt
            for layer, grad in per_layer.items():
                st.beta[layer] = sgd_step(st.beta[layer], grad, o.lr, o.momentum, o.weight_decay)

    stacked = [local[k] for k in scen]
    for n in names:
        role = classify(n)
        # G: sample-weighted FedAvg, one copy for everybody. BN (ablation): FedAvg too.
        if role.group is Group.GLOBAL:
            new.global_arrays[n] = average(stacked, weights, n)
        elif role.is_bn:
            avg = average(stacked, weights, n)
            for k in scen:
                sc_states[k].arrays[n] = avg.copy()

    # S: conflict-averse consensus d per expert, then theta_k = sent + D_k + alpha_k d.
    for i, (unit, tensor_names) in enumerate(units.items()):
        deltas = np.stack([flat(local[k], tensor_names) - flat(sent[k], tensor_names) for k in scen])
        d = coordinate(deltas, cfg.conflict, c=cfg.c, seed=cfg.seed + new.round)
        for j, k in enumerate(scen):
            st = sc_states[k]
            alpha = st.alpha.value[i] if cfg.alpha_per_expert else st.alpha.value
            nxt = personalized_next(flat(sent[k], tensor_names), deltas[j], d, float(alpha))
            st.arrays.update(unflat(nxt, sent[k], tensor_names))
            st.alpha_dir[unit] = d

    # Towers of task t attend only to towers of task t (tensor by tensor).
    if cfg.tower_mode != "local":
        for n in names:
            role = classify(n)
            if role.group is not Group.TOWER or role.is_bn:
                continue
            s = np.stack([sent[k][n].astype(np.float64).ravel() for k in scen])
            deltas = np.stack([local[k][n].astype(np.float64).ravel() for k in scen]) - s
            beta = np.array([float(sc_states[k].beta[role.layer].value) for k in scen])
            nxt, direction = tower_next(s, deltas, beta, cfg.tower_mode, weights)
            for j, k in enumerate(scen):
                sc_states[k].arrays[n] = nxt[j].reshape(sent[k][n].shape).astype(sent[k][n].dtype)
                if cfg.tower_mode == "attention":
                    sc_states[k].beta_dir[n] = direction[j]

    for k in scen:
        sc_states[k].num_examples = int(num_examples[k])
    new.round = state.round + 1
    return new


def hyperparams(state: ServerState) -> dict[str, dict[str, Any]]:
    """alpha and mean beta per scenario (None where the rule has none), for logs and reports."""
    out = {}
    for name, sc in sorted(state.scenarios.items()):
        betas = [float(np.mean(hp.value)) for hp in sc.beta.values()]
        out[name] = {
            "alpha": np.asarray(sc.alpha.value).tolist() if sc.alpha is not None else None,
            "beta_mean": float(np.mean(betas)) if betas else None,
        }
    return out


__all__ = ["AggregationConfig", "HyperParam", "aggregate_round", "hyperparams"]
