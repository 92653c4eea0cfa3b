"""Sample-weighted FedAvg."""

from __future__ import annotations

import numpy as np
import pytest

from pfms_server.aggregation.fedavg import weighted_average


def test_by_hand() -> None:
    # (1*[1, 2] + 3*[3, 4]) / 4 = [10, 14] / 4
    out = weighted_average(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1, 3]))
    np.testing.assert_allclose(out, [2.5, 3.5], atol=1e-15)
    assert out.dtype == np.float64


def test_tensor_shape_and_int_input() -> None:
    arrays = np.arange(2 * 2 * 3).reshape(2, 2, 3)  # ints
    out = weighted_average(arrays, np.array([2.0, 2.0]))
    assert out.shape == (2, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out, (arrays[0] + arrays[1]) / 2)


def test_zero_weight_client_ignored_and_single() -> None:
    arrays = np.array([[5.0], [100.0], [7.0]])
    np.testing.assert_allclose(weighted_average(arrays, np.array([1.0, 0.0, 1.0])), [6.0])
    np.testing.assert_allclose(weighted_average(arrays[:1], np.array([9.0])), [5.0])


def test_huge_weights_do_not_overflow() -> None:
    out = weighted_average(np.array([[1.0], [3.0]]), np.array([1e308, 1e308]))
    np.testing.assert_allclose(out, [2.0])


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([0.0, 0.0], "positive sum"),
        ([1.0, -1.0], "non-negative"),
        ([np.nan, 1.0], "finite"),
        ([np.inf, 1.0], "finite"),
        ([1.0, 1.0, 1.0], "shape"),
        ([[1.0, 1.0]], "shape"),
    ],
)
def test_bad_weights(weights: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        weighted_average(np.ones((2, 3)), np.array(weights))


def test_bad_arrays() -> None:
    with pytest.raises(ValueError, match="NaN"):
        weighted_average(np.array([[1.0], [np.nan]]), np.ones(2))
    with pytest.raises(ValueError, match="K >= 1"):
        weighted_average(np.ones((0, 3)), np.ones(0))


# --- fedavg_round: the FedAvg family's whole server side ----------------------------------------
def _state():
    from pfms_server.aggregation.state import ServerState

    st = ServerState(round=3)
    st.set_init({"experts.global.0.layers.0.linear.weight": np.zeros(2, np.float32),
                 "towers.0.out.weight": np.zeros(2, np.float32),
                 "towers.0.mlp.layers.0.bn.num_batches_tracked": np.array(0, np.int64)})
    return st


def test_fedavg_round_sends_everyone_the_weighted_mean_and_keeps_its_input() -> None:
    from pfms_server.aggregation.fedavg import fedavg_round

    st = _state()
    before = {n: v.copy() for n, v in st.global_arrays.items()}
    ups = {"B": {"towers.0.out.weight": np.array([4.0, 0.0], np.float32),
                 "towers.0.mlp.layers.0.bn.num_batches_tracked": np.array(10, np.int64)},
           "A": {"towers.0.out.weight": np.array([0.0, 8.0], np.float32),
                 "towers.0.mlp.layers.0.bn.num_batches_tracked": np.array(13, np.int64)}}
    new = fedavg_round(st, ups, {"A": 3, "B": 1})
    np.testing.assert_allclose(new.global_arrays["towers.0.out.weight"], [1.0, 6.0])
    assert new.global_arrays["towers.0.out.weight"].dtype == np.float32
    assert new.global_arrays["towers.0.mlp.layers.0.bn.num_batches_tracked"] == 12  # rint(12.25), an integer
    assert new.global_arrays["towers.0.mlp.layers.0.bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(new.arrays_for("A")["towers.0.out.weight"], new.arrays_for("B")["towers.0.out.weight"])
    assert {k: new.scenarios[k].num_examples for k in "AB"} == {"A": 3, "B": 1}
    assert new.round == 4
    assert st.round == 3 and not st.scenarios and set(st.global_arrays) == set(before)  # the input is untouched
    for n, v in before.items():
        np.testing.assert_array_equal(st.global_arrays[n], v)


def test_fedavg_round_with_one_client_and_with_none() -> None:
    from pfms_server.aggregation.fedavg import fedavg_round

    one = fedavg_round(_state(), {"A": {"towers.0.out.weight": np.array([1.5, -2.0], np.float32)}}, {"A": 7})
    np.testing.assert_array_equal(one.global_arrays["towers.0.out.weight"], [1.5, -2.0])
    assert one.scenarios["A"].num_examples == 7
    none = fedavg_round(_state(), {}, {})
    assert none.round == 3 and not none.scenarios


def test_integer_buffers_are_rounded_not_truncated() -> None:
    from pfms_server.aggregation.fedavg import average

    ups = [{"n": np.array(10, np.int64), "f": np.array([0.25], np.float32)},
           {"n": np.array(14, np.int64), "f": np.array([0.75], np.float32)}]
    out = average(ups, np.array([1.0, 3.0]), "n")  # 12.5 + ... = (10 + 42) / 4 = 13.0
    assert out == 13 and out.dtype == np.int64
    out = average(ups, np.array([1.0, 1.0]), "n")  # 12.0
    assert out == 12
    three = [{"n": np.array(v, np.uint8)} for v in (1, 2, 2)]  # 1.666...: rint gives 2, a cast would give 1
    out = average(three, np.ones(3), "n")
    assert out == 2 and out.dtype == np.uint8
    f = average(ups, np.array([1.0, 1.0]), "f")
    assert f.dtype == np.float32 and f[0] == np.float32(0.5)


def test_float32_weights_are_normalised_in_float64():
    """Weights may arrive as float32 (a count that went through a float metric): they are
    normalised in float64, so the mean equals the one from the same weights in float64."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 6))
    w32 = np.array([1 / 3, 1 / 7, 2 / 9], dtype=np.float32)
    np.testing.assert_array_equal(weighted_average(a, w32), weighted_average(a, w32.astype(np.float64)))
