"""FedAMP's in-round mixing by value: every scenario's cloud model from a hand-written formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pfms_server.aggregation.fedamp import FedAMPConfig, attention_weights, fedamp_round
from pfms_server.aggregation.state import ServerState

W = "experts.global.0.layers.0.linear.weight"
B = "towers.0.out.bias"
NBT = "experts.global.0.layers.0.bn.num_batches_tracked"


def xi_by_hand(models: list[np.ndarray], self_weight: float, sigma: float) -> np.ndarray:
    """xi_kk = self_weight; xi_kj = (1 - self_weight) softmax_{j != k}(sigma cos(w_k, w_j))."""
    k = len(models)
    xi = np.zeros((k, k))
    for i in range(k):
        others = [j for j in range(k) if j != i]
        cos = [float(models[i] @ models[j]) / (np.linalg.norm(models[i]) * np.linalg.norm(models[j])) for j in others]
        e = [math.exp(sigma * c) for c in cos]
        for j, v in zip(others, e):
            xi[i, j] = (1 - self_weight) * v / sum(e)
        xi[i, i] = self_weight
    return xi


def uploads(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, k in enumerate(["US", "ES", "FR"]):  # not in sorted order on purpose
        out[k] = {W: rng.normal(size=(2, 3)).astype(np.float32), B: rng.normal(size=(1,)).astype(np.float32),
                  NBT: np.array(10 * (i + 1), dtype=np.int64)}
    return out


def test_every_scenario_gets_its_similarity_weighted_cloud_model():
    ups = uploads()
    cfg = FedAMPConfig(self_weight=0.4, sigma=3.0)
    state = ServerState(round=4)
    new = fedamp_round(state, ups, {"US": 5, "ES": 1, "FR": 9}, cfg)
    order = sorted(ups)  # ES, FR, US
    flat = [np.concatenate([ups[k][W].astype(np.float64).ravel(), ups[k][B].astype(np.float64)]) for k in order]
    xi = xi_by_hand(flat, 0.4, 3.0)
    for i, k in enumerate(order):
        for n in (W, B):
            want = sum(xi[i, j] * ups[kk][n].astype(np.float64) for j, kk in enumerate(order))
            np.testing.assert_allclose(new.scenarios[k].arrays[n], want, rtol=1e-6, atol=1e-7, err_msg=f"{k} {n}")
            assert new.scenarios[k].arrays[n].dtype == np.float32
        # integer buffers are not mixed: each scenario keeps its own counter
        assert new.scenarios[k].arrays[NBT] == ups[k][NBT] and new.scenarios[k].arrays[NBT].dtype == np.int64
    assert {k: new.scenarios[k].num_examples for k in order} == {"ES": 1, "FR": 9, "US": 5}  # counts do not weigh
    assert new.round == 5 and state.round == 4 and not state.scenarios


def test_sample_counts_do_not_change_the_mix():
    ups = uploads(1)
    cfg = FedAMPConfig(self_weight=0.5, sigma=5.0)
    a = fedamp_round(ServerState(), ups, {"US": 1, "ES": 1, "FR": 1}, cfg)
    b = fedamp_round(ServerState(), ups, {"US": 100, "ES": 1, "FR": 7}, cfg)
    for k in ups:
        np.testing.assert_array_equal(a.scenarios[k].arrays[W], b.scenarios[k].arrays[W])


def test_attention_weights_by_hand_and_edge_cases():
    rng = np.random.default_rng(2)
    models = [rng.normal(size=6) for _ in range(4)]
    np.testing.assert_allclose(attention_weights(np.stack(models), 0.3, 2.0), xi_by_hand(models, 0.3, 2.0),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(attention_weights(np.ones((1, 3)), 0.5, 5.0), [[1.0]])
    two = attention_weights(np.stack(models[:2]), 0.25, 9.0)  # one other: it takes all of 1 - self_weight
    np.testing.assert_allclose(two, [[0.25, 0.75], [0.75, 0.25]])
    flat = attention_weights(np.stack(models), 0.5, 0.0)  # sigma 0: the others share equally
    np.testing.assert_allclose(flat[0], [0.5, 1 / 6, 1 / 6, 1 / 6])
    zero = attention_weights(np.stack([np.zeros(3), np.ones(3), -np.ones(3)]), 0.5, 1.0)  # a zero model: no NaN
    assert np.all(np.isfinite(zero))
    np.testing.assert_allclose(zero.sum(axis=1), 1.0)
    huge = attention_weights(np.stack(models) * 1e200, 0.5, 50.0)
    assert np.all(np.isfinite(huge))
    np.testing.assert_allclose(huge, attention_weights(np.stack(models), 0.5, 50.0), rtol=1e-9)


def test_second_round_mixes_the_new_uploads_not_the_old_cloud_models():
    cfg = FedAMPConfig(0.5, 5.0)
    one = fedamp_round(ServerState(), uploads(0), {"US": 1, "ES": 1, "FR": 1}, cfg)
    ups2 = uploads(7)
    two = fedamp_round(one, ups2, {"US": 1, "ES": 1, "FR": 1}, cfg)
    fresh = fedamp_round(ServerState(), ups2, {"US": 1, "ES": 1, "FR": 1}, cfg)
    for k in ups2:
        np.testing.assert_array_equal(two.scenarios[k].arrays[W], fresh.scenarios[k].arrays[W])
    assert two.round == 2


def test_empty_round_and_config():
    st = ServerState(round=3)
    assert fedamp_round(st, {}, {}, FedAMPConfig(0.5, 5.0)).round == 3
    assert FedAMPConfig.from_config({"fedamp": {"self_weight": "0.2", "sigma": 4}}) == FedAMPConfig(0.2, 4.0)
    assert FedAMPConfig.from_config({"fedamp": {"self_weight": 1, "sigma": 0}}) == FedAMPConfig(1.0, 0.0)
    assert FedAMPConfig.from_config({"fedamp": {"self_weight": 0, "sigma": 0}}) == FedAMPConfig(0.0, 0.0)
    for bad in ({"self_weight": 1.1, "sigma": 1.0}, {"self_weight": -0.1, "sigma": 1.0},
                {"self_weight": 0.5, "sigma": -1.0}):
        with pytest.raises(ValueError, match="strategy.fedamp"):
            FedAMPConfig.from_config({"fedamp": bad})


def test_one_scenario_gets_its_own_model_back():
    ups = {"NL": uploads()["ES"]}
    new = fedamp_round(ServerState(), ups, {"NL": 4}, FedAMPConfig(0.5, 5.0))
    for n in (W, B, NBT):
        np.testing.assert_array_equal(new.scenarios["NL"].arrays[n], ups["NL"][n])


def test_similarities_are_exact_across_scales_and_sharp_softmaxes_stay_finite():
    rng = np.random.default_rng(3)
    a, b, c = (rng.normal(size=5) for _ in range(3))
    want = attention_weights(np.stack([a, b, c]), 0.5, 3.0)
    # Each model's scale is its own business: cosines do not see it, whatever it is.
    for scales in ([1e300, 1e-300, 1.0], [1e-300, 1e-300, 1e-300], [1e-200, 1.0, 1e150]):
        got = attention_weights(np.stack([a * scales[0], b * scales[1], c * scales[2]]), 0.5, 3.0)
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=str(scales))
    # A sharp softmax (sigma 1000): no overflow to inf/NaN; a model opposite to both others
    # spreads its share evenly instead of dividing 0 by 0.
    sharp = attention_weights(np.stack([a, a * 2.0, -a]), 0.5, 1000.0)
    assert np.all(np.isfinite(sharp))
    np.testing.assert_allclose(sharp[0], [0.5, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(sharp[2], [0.25, 0.25, 0.5], atol=1e-12)
