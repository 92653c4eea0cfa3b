"""The rule registry: each strategy.algorithm maps to the right pure aggregation, with its settings."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

from pfms_client.config import load_config
from pfms_server.aggregation.rules import ALGORITHMS, make_rule
from pfms_server.aggregation.state import ServerState

G = "experts.global.0.layers.0.linear.weight"
S = "experts.scenario.0.layers.0.linear.weight"
T = "towers.0.out.weight"


@functools.lru_cache(maxsize=None)
def _composed(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(load_config([f"strategy={name}"]).strategy, resolve=True)


def strategy(name: str) -> dict:
    """The shipped conf/strategy/<name>.yaml, composed once per session."""
    return copy.deepcopy(_composed(name))


def start() -> ServerState:
    st = ServerState(round=2)
    st.set_init({G: np.zeros((2,), np.float32), S: np.zeros((2,), np.float32), T: np.zeros((2,), np.float32)})
    return st


UPLOADS = {"A": {G: np.array([1.0, 0.0], np.float32), S: np.array([1.0, 0.0], np.float32),
                 T: np.array([2.0, 0.0], np.float32)},
           "B": {G: np.array([0.0, 3.0], np.float32), S: np.array([-1.0, 1.0], np.float32),
                 T: np.array([0.0, 4.0], np.float32)}}
COUNTS = {"A": 3, "B": 1}


def test_every_algorithm_the_configs_name_has_a_rule():
    assert ALGORITHMS == ("pfmsmtrec", "fedavg", "fedamp", "none")
    for name in ("pfmsmtrec", "fedavg", "fedprox", "fedbn", "fedper", "fedrep", "ditto", "fedamp", "local"):
        rule = make_rule(strategy(name), seed=0)
        assert rule.name == strategy(name)["algorithm"]
        assert rule.description


def test_pfmsmtrec_rule_is_aggregate_round_with_the_config_and_seed():
    from pfms_server.aggregation.pfmsmtrec import AggregationConfig, aggregate_round

    s = strategy("pfmsmtrec")
    rule = make_rule(s, seed=5)
    want = aggregate_round(start(), UPLOADS, COUNTS, AggregationConfig.from_config(s, seed=5))
    got = rule.aggregate(start(), UPLOADS, COUNTS)
    for k in "AB":
        for n, v in want.arrays_for(k).items():
            np.testing.assert_array_equal(got.arrays_for(k)[n], v)
    assert "cagrad" in rule.description and "c=0.40" in rule.description


def test_fedavg_rule_is_the_weighted_mean():
    got = make_rule(strategy("fedavg"), seed=0).aggregate(start(), UPLOADS, COUNTS)
    np.testing.assert_allclose(got.arrays_for("A")[T], [1.5, 1.0])
    np.testing.assert_allclose(got.arrays_for("B")[S], [0.5, 0.25])
    assert got.round == 3


def test_fedamp_rule_uses_its_self_weight_and_sigma():
    from pfms_server.aggregation.fedamp import FedAMPConfig, fedamp_round

    s = strategy("fedamp")
    s["fedamp"] = {"self_weight": 0.7, "sigma": 2.0}
    got = make_rule(s, seed=0).aggregate(start(), UPLOADS, COUNTS)
    want = fedamp_round(start(), UPLOADS, COUNTS, FedAMPConfig(0.7, 2.0))
    np.testing.assert_array_equal(got.scenarios["A"].arrays[T], want.scenarios["A"].arrays[T])
    assert "0.7" in make_rule(s, 0).description


def test_none_rule_changes_nothing_but_the_round_and_counts():
    st = start()
    got = make_rule(strategy("local"), seed=0).aggregate(st, UPLOADS, COUNTS)
    assert got.round == 3 and st.round == 2
    assert {k: got.scenarios[k].num_examples for k in "AB"} == COUNTS
    assert all(not got.scenarios[k].arrays for k in "AB")
    for n, v in st.global_arrays.items():
        np.testing.assert_array_equal(got.global_arrays[n], v)
    assert not st.scenarios


def test_unknown_algorithm_is_refused_naming_the_key():
    s = strategy("fedavg")
    s["algorithm"] = "krum"
    with pytest.raises(ValueError, match="strategy.algorithm='krum'"):
        make_rule(s, seed=0)


def test_descriptions_name_the_switches_the_run_uses():
    """The run log's one-line description of the rule (Strategy.summary) is the user's check of the switches."""
    assert make_rule(strategy("pfmsmtrec"), 0).description == (
        "conflict: cagrad (c=0.40) | alpha: learned | towers: attention | FedBN: True")
    s = strategy("pfmsmtrec")
    s["fedbn"], s["conflict"]["method"], s["towers"]["mode"] = False, "pcgrad", "local"
    assert make_rule(s, 0).description == "conflict: pcgrad (c=0.40) | alpha: learned | towers: local | FedBN: False"
    assert make_rule(strategy("fedbn"), 0).description == "sample-weighted mean of every shared tensor | FedBN: True"
    assert make_rule(strategy("local"), 0).description == "local training only, nothing shared"
    assert make_rule(strategy("fedamp"), 0).description == "similarity-weighted (self weight 0.5, sigma 5.0)"
