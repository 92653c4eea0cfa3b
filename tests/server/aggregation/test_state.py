"""The server state: what each scenario is sent, first use, and the atomic checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pfms_server.aggregation.personalize import HyperParam
from pfms_server.aggregation.state import ScenarioState, ServerState

G = "experts.global.0.layers.0.linear.weight"
S = "experts.scenario.0.layers.0.linear.weight"
T0 = "towers.0.out.weight"
T1 = "towers.1.mlp.layers.0.linear.bias"
BN = "towers.0.mlp.layers.0.bn.num_batches_tracked"


def init() -> dict[str, np.ndarray]:
    return {G: np.arange(4, dtype=np.float32).reshape(2, 2), S: np.ones(3, np.float32), T0: np.zeros((1, 2), np.float32),
            T1: np.full(2, 5.0, np.float32), BN: np.array(3, np.int64)}


def test_set_init_copies_and_splits_out_the_global_experts():
    arrays = init()
    st = ServerState()
    st.set_init(arrays)
    arrays[G][0, 0] = 99.0  # the caller's arrays are not aliased
    assert st.init[G][0, 0] == 0.0 and st.global_arrays[G][0, 0] == 0.0
    assert set(st.global_arrays) == {G}
    st.global_arrays[G][1, 1] = -1.0
    assert st.init[G][1, 1] == 3.0


def test_arrays_for_layers_init_then_global_then_own():
    st = ServerState()
    st.set_init(init())
    assert set(st.arrays_for("new")) == set(init())  # unknown scenario: the initialisation
    st.global_arrays[G] = np.full((2, 2), 7.0, np.float32)
    st.scenarios["A"] = ScenarioState(arrays={S: np.full(3, 2.0, np.float32), G: np.zeros((2, 2), np.float32)})
    a, b = st.arrays_for("A"), st.arrays_for("B")
    np.testing.assert_array_equal(a[S], 2.0)
    np.testing.assert_array_equal(a[G], 0.0)  # a scenario's own copy wins over the shared one
    np.testing.assert_array_equal(b[G], 7.0)
    np.testing.assert_array_equal(b[S], 1.0)
    assert ServerState().arrays_for("x") == {}


def test_scenario_is_created_from_the_init_with_alpha_and_one_beta_per_tower_layer():
    st = ServerState()
    st.set_init(init())
    sc = st.scenario("A", np.array([0.3, 0.4]), 0.25)
    assert set(sc.arrays) == {S, T0, T1, BN}  # everything but G
    sc.arrays[S][0] = 42.0
    assert st.init[S][0] == 1.0  # a copy of the init
    np.testing.assert_array_equal(sc.alpha.value, [0.3, 0.4])
    assert sorted(sc.beta) == ["towers.0.mlp.layers.0.bn", "towers.0.out", "towers.1.mlp.layers.0.linear"]
    assert all(float(b.value) == 0.25 and b.momentum is None for b in sc.beta.values())
    assert st.scenario("A", np.array(0.9), 0.9) is sc  # second use: the same entry, untouched
    with pytest.raises(RuntimeError, match="no initial tensors"):
        ServerState().scenario("A", np.array(0.1), 0.1)
    own = ServerState().own("B")
    assert own.arrays == {} and own.alpha is None and own.beta == {}


def test_save_and_load_round_trip_everything(tmp_path):
    st = ServerState(round=7)
    st.set_init(init())
    sc = st.scenario("QK-video.1", np.array(0.2), 0.1)  # names with dots and dashes survive
    sc.alpha = HyperParam(np.array(0.35), momentum=np.array(-0.01))
    sc.alpha_dir = {"experts.scenario.0": np.arange(3.0)}
    sc.beta_dir = {T0: np.array([0.5, -0.5])}
    sc.num_examples = 123
    st.own("local-only").num_examples = 9
    st.save(tmp_path / "server_state")
    back = ServerState.load(tmp_path / "server_state")
    assert back.round == 7 and set(back.scenarios) == {"QK-video.1", "local-only"}
    for n, v in st.init.items():
        np.testing.assert_array_equal(back.init[n], v)
        assert back.init[n].dtype == v.dtype
    b = back.scenarios["QK-video.1"]
    assert b.alpha.to_dict() == {"value": 0.35, "momentum": -0.01}
    assert {k: v.to_dict() for k, v in b.beta.items()} == {k: v.to_dict() for k, v in sc.beta.items()}
    np.testing.assert_array_equal(b.alpha_dir["experts.scenario.0"], np.arange(3.0))
    np.testing.assert_array_equal(b.beta_dir[T0], [0.5, -0.5])
    assert b.num_examples == 123 and back.scenarios["local-only"].num_examples == 9
    assert back.scenarios["local-only"].alpha is None
    for n, v in st.arrays_for("QK-video.1").items():
        np.testing.assert_array_equal(back.arrays_for("QK-video.1")[n], v)
    meta = json.loads((tmp_path / "server_state" / "state.json").read_text())
    assert meta["round"] == 7


def test_a_state_without_init_round_trips_as_none(tmp_path):
    ServerState(round=1).save(tmp_path / "s")
    back = ServerState.load(tmp_path / "s")
    assert back.init is None and back.round == 1 and back.global_arrays == {}


def test_save_replaces_the_old_checkpoint_and_a_failed_write_keeps_it(tmp_path, monkeypatch):
    d = tmp_path / "server_state"
    st = ServerState(round=1)
    st.set_init(init())
    st.save(d)
    st.round = 2
    st.save(d)
    assert ServerState.load(d).round == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server_state"]  # no temp or .old folder left

    def boom(*a, **k):
        raise OSError("disk full")

    st.round = 3
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        st.save(d)
    assert ServerState.load(d).round == 2  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server_state"]


def test_save_makes_missing_folders_clears_a_stale_backup_and_writes_beside_its_target(tmp_path, monkeypatch):
    import tempfile

    st = ServerState(round=4)
    st.set_init(init())
    target = tmp_path / "runs" / "r1" / "server_state"  # parents do not exist yet
    stale = target.with_name("server_state.old")  # left behind by a crash between two renames
    target.mkdir(parents=True)
    stale.mkdir()
    (stale / "arrays.npz").write_bytes(b"old")
    # The checkpoint is built next to its final place (one file system, an atomic rename),
    # never in the system temp folder, which may be missing, full or on another device.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    st.save(target)
    assert ServerState.load(target).round == 4
    assert sorted(p.name for p in target.parent.iterdir()) == ["server_state"]
    deep = tmp_path / "a" / "b" / "c" / "server_state"
    st.save(deep)
    assert ServerState.load(deep).round == 4
