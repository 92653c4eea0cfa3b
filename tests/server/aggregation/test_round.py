"""aggregate_round on hand-made named arrays: who gets what, and the spec's formulas."""

import numpy as np
import pytest

from pfms_server.aggregation.pfmsmtrec import AggregationConfig, aggregate_round
from pfms_server.aggregation.state import ServerState

STRATEGY = {
    "fedbn": True,
    "conflict": {"method": "mean", "c": 0.4},
    "personalization": {"mode": "fixed", "alpha_init": 0.1, "alpha_fixed": 1.0, "per_expert": False,
                        "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "towers": {"mode": "fedavg", "beta_init": 0.1, "learn_beta": True, "lr": 0.01, "momentum": 0.9,
               "weight_decay": 1e-4},
}
G = "experts.global.0.layers.0.linear.weight"
S = "experts.scenario.0.layers.0.linear.weight"
T = "towers.0.out.weight"


def cfg(**patch):
    s = {k: (dict(v) if isinstance(v, dict) else v) for k, v in STRATEGY.items()}
    for path, value in patch.items():
        node = s
        *head, last = path.split("__")
        for h in head:
            node = node[h]
        node[last] = value
    return AggregationConfig.from_config(s, seed=0)


def state():
    st = ServerState()
    st.set_init({G: np.zeros((2, 2), np.float32), S: np.zeros((2, 2), np.float32), T: np.zeros((1, 2), np.float32)})
    return st


def uploads():
    return {
        "A": {G: np.full((2, 2), 1.0, np.float32), S: np.full((2, 2), 1.0, np.float32), T: np.full((1, 2), 2.0, np.float32)},
        "B": {G: np.full((2, 2), 4.0, np.float32), S: np.full((2, 2), 3.0, np.float32), T: np.full((1, 2), 4.0, np.float32)},
    }


def test_global_is_sample_weighted_fedavg_and_shared():
    new = aggregate_round(state(), uploads(), {"A": 3, "B": 1}, cfg())
    np.testing.assert_allclose(new.global_arrays[G], np.full((2, 2), 1.75))
    np.testing.assert_array_equal(new.arrays_for("A")[G], new.arrays_for("B")[G])
    assert new.round == 1


def test_alpha_one_with_mean_is_local_plus_mean_update():
    new = aggregate_round(state(), uploads(), {"A": 1, "B": 1}, cfg())
    # D_A = 1, D_B = 3, d = 2: theta_k = sent + D_k + 1 * d
    np.testing.assert_allclose(new.scenarios["A"].arrays[S], np.full((2, 2), 3.0))
    np.testing.assert_allclose(new.scenarios["B"].arrays[S], np.full((2, 2), 5.0))
    np.testing.assert_allclose(new.scenarios["A"].arrays[T], new.scenarios["B"].arrays[T])  # towers fedavg


def test_learned_alpha_uses_init_then_hypergradient():
    c = cfg(personalization__mode="learned", towers__mode="attention")
    one = aggregate_round(state(), uploads(), {"A": 1, "B": 1}, c)
    np.testing.assert_allclose(one.scenarios["A"].arrays[S], np.full((2, 2), 1.0 + 0.1 * 2.0), rtol=1e-6)
    assert float(one.scenarios["A"].alpha.value) == pytest.approx(0.1)  # no direction yet
    # Round 2: A's training moved S further along d (g = sent - local < 0 along d) -> alpha grows.
    up2 = {k: {n: v + (1.0 if n == S else 0.0) for n, v in one.arrays_for(k).items()} for k in ("A", "B")}
    two = aggregate_round(one, up2, {"A": 1, "B": 1}, c)
    assert float(two.scenarios["A"].alpha.value) > 0.1
    assert float(two.scenarios["A"].alpha.value) <= 1.0


def test_towers_local_mode_never_touches_towers():
    ups = {k: {n: v for n, v in u.items() if not n.startswith("towers")} for k, u in uploads().items()}
    st = ServerState()
    st.set_init({G: np.zeros((2, 2), np.float32), S: np.zeros((2, 2), np.float32)})
    new = aggregate_round(st, ups, {"A": 1, "B": 1}, cfg(towers__mode="local"))
    assert not any(n.startswith("towers") for n in new.arrays_for("A"))


def test_non_participant_keeps_its_tensors_but_gets_new_global():
    st = aggregate_round(state(), uploads(), {"A": 1, "B": 1}, cfg())
    only_a = {"A": {n: v + 1 for n, v in st.arrays_for("A").items()}}
    new = aggregate_round(st, only_a, {"A": 1}, cfg())
    np.testing.assert_array_equal(new.scenarios["B"].arrays[S], st.scenarios["B"].arrays[S])
    np.testing.assert_array_equal(new.arrays_for("B")[G], new.arrays_for("A")[G])


def test_unknown_switch_values_are_rejected():
    with pytest.raises(ValueError, match="strategy.conflict.method"):
        cfg(conflict__method="magic")
    with pytest.raises(ValueError, match="strategy.towers.mode"):
        cfg(towers__mode="shared")


def test_state_round_trips_through_disk(tmp_path):
    c = cfg(personalization__mode="learned", towers__mode="attention")
    st = aggregate_round(state(), uploads(), {"A": 1, "B": 2}, c)
    st.save(tmp_path / "server_state")
    back = ServerState.load(tmp_path / "server_state")
    assert back.round == st.round and set(back.scenarios) == {"A", "B"}
    for k in ("A", "B"):
        for n, v in st.arrays_for(k).items():
            np.testing.assert_array_equal(back.arrays_for(k)[n], v)
        assert back.scenarios[k].alpha.to_dict() == st.scenarios[k].alpha.to_dict()
        assert {l: b.to_dict() for l, b in back.scenarios[k].beta.items()} == \
               {l: b.to_dict() for l, b in st.scenarios[k].beta.items()}


@pytest.mark.parametrize("path, value, key", [("conflict__method", "magic", "strategy.conflict.method"),
                                              ("personalization__mode", "magic", "strategy.personalization.mode"),
                                              ("towers__mode", "magic", "strategy.towers.mode")])
def test_an_unknown_method_or_mode_is_refused_naming_its_key(path, value, key):
    with pytest.raises(ValueError, match=rf"^{key}='magic': expected one of \["):
        cfg(**{path: value})
