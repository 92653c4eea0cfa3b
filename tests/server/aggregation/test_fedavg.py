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
