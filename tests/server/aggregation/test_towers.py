"""Task-tower personalized aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from pfms_server.aggregation.towers import MODES, attention_mix, attention_weights, tower_next


def test_single_client() -> None:
    np.testing.assert_array_equal(attention_weights(np.array([[3.0, -1.0]])), [[1.0]])


def test_rows_are_distributions() -> None:
    rng = np.random.default_rng(0)
    for k in range(1, 7):
        a = attention_weights(rng.standard_normal((k, 10)) * 3)
        assert a.shape == (k, k)
        assert np.all(a > 0) and np.all(a <= 1)
        np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-14)


def test_identical_deltas_mix_to_themselves() -> None:
    delta = np.array([0.5, -2.0, 1.0])
    D = np.stack([delta] * 3)
    np.testing.assert_allclose(attention_weights(D), np.full((3, 3), 1 / 3))
    np.testing.assert_allclose(attention_mix(D), D, atol=1e-15)


def test_orthogonal_large_deltas_attend_to_self() -> None:
    # logits: diagonal 100^2 / sqrt(4) = 5000, off-diagonal 0 -> a = I to rounding
    D = 100.0 * np.eye(3, 4)
    np.testing.assert_allclose(attention_weights(D), np.eye(3), atol=1e-300)


def test_hand_computed_2x2() -> None:
    # D = [[1, 0], [1, 1]], n = 2: logits = [[1, 1], [1, 2]] / sqrt(2).
    # row 0: equal -> (1/2, 1/2); row 1: (1, e^s) / (1 + e^s) with s = 1/sqrt(2).
    # u_0 = (D_0 + D_1) / 2 = (1, 1/2); u_1 = a_10 (1, 0) + a_11 (1, 1) = (1, a_11).
    D = np.array([[1.0, 0.0], [1.0, 1.0]])
    e = np.exp(1 / np.sqrt(2))
    expected = np.array([[0.5, 0.5], [1 / (1 + e), e / (1 + e)]])
    np.testing.assert_allclose(attention_weights(D), expected, atol=1e-15)
    np.testing.assert_allclose(attention_mix(D), [[1.0, 0.5], [1.0, e / (1 + e)]], atol=1e-15)


def test_zero_and_huge_deltas_never_nan() -> None:
    np.testing.assert_allclose(attention_weights(np.zeros((3, 2))), np.full((3, 3), 1 / 3))
    rng = np.random.default_rng(1)
    for s in (1e-200, 1e200):
        a = attention_weights(rng.standard_normal((4, 5)) * s)
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-14)


def test_attention_mode_and_direction_is_d_next_d_beta() -> None:
    rng = np.random.default_rng(2)
    sent, deltas = rng.standard_normal((2, 3, 6))
    beta = np.array([0.1, 0.5, 1.0])
    nxt, direction = tower_next(sent, deltas, beta, "attention")
    u = attention_mix(deltas)
    np.testing.assert_allclose(direction, u)
    np.testing.assert_allclose(nxt, sent + deltas + beta[:, None] * u, atol=1e-15)
    # next is linear in beta, so a finite difference recovers the direction
    h = 1e-3
    nxt_h, _ = tower_next(sent, deltas, beta + h, "attention")
    np.testing.assert_allclose((nxt_h - nxt) / h, direction, atol=1e-9)


def test_fedavg_mode() -> None:
    sent = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 2.0]])
    deltas = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # sent + delta = [1, 1], [1, 1], [2, 2]; weights 1, 1, 2 -> (1 + 1 + 4) / 4 = 1.5
    nxt, direction = tower_next(sent, deltas, np.zeros(3), "fedavg", np.array([1.0, 1.0, 2.0]))
    np.testing.assert_allclose(nxt, np.full((3, 2), 1.5))
    np.testing.assert_array_equal(direction, np.zeros((3, 2)))
    assert direction.shape == (3, 2) and direction.dtype == np.float64
    nxt_u, _ = tower_next(sent, deltas, np.zeros(3), "fedavg")  # uniform when None
    np.testing.assert_allclose(nxt_u, np.full((3, 2), 4 / 3))


def test_local_mode() -> None:
    rng = np.random.default_rng(3)
    sent, deltas = rng.standard_normal((2, 2, 4))
    nxt, direction = tower_next(sent, deltas, np.full(2, 0.7), "local")
    np.testing.assert_array_equal(nxt, sent + deltas)
    np.testing.assert_array_equal(direction, np.zeros((2, 4)))
    assert direction.shape == (2, 4) and direction.dtype == np.float64


def test_validation() -> None:
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="attention, fedavg, local"):
        tower_next(z, z, np.zeros(2), "mean")
    with pytest.raises(ValueError, match="sent shape"):
        tower_next(np.zeros((2, 4)), z, np.zeros(2), "attention")
    with pytest.raises(ValueError, match="beta"):
        tower_next(z, z, np.zeros(3), "attention")
    with pytest.raises(ValueError, match=r"^sent must have shape \(K, n\)"):  # the message names the argument
        tower_next(np.zeros(3), z, np.zeros(2), "attention")
    with pytest.raises(ValueError, match=r"^sent contain NaN"):
        tower_next(np.full((2, 3), np.nan), z, np.zeros(2), "attention")
    with pytest.raises(ValueError, match=r"\(K, n\)"):
        attention_weights(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        attention_weights(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="weights"):
        tower_next(z, z, np.zeros(2), "fedavg", np.array([1.0, -1.0]))
    assert MODES == ("attention", "fedavg", "local")


def test_huge_deltas_raise_no_warning() -> None:
    import warnings

    rng = np.random.default_rng(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow warning would be an error here
        a = attention_weights(rng.standard_normal((3, 4)) * 1e200)
    assert np.all(np.isfinite(a))


def test_inputs_are_checked_and_computed_in_float64() -> None:
    for bad in (np.zeros((0, 3)), np.zeros((2, 0)), np.zeros(3)):
        with pytest.raises(ValueError, match=r"^deltas must have shape \(K, n\)"):
            attention_weights(bad)
    rng = np.random.default_rng(6)
    d32 = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(attention_weights(d32), attention_weights(d32.astype(np.float64)))
    s32 = rng.standard_normal((3, 5)).astype(np.float32)
    got = tower_next(s32, d32, np.array([0.1, 0.2, 0.3]), "attention")
    want = tower_next(s32.astype(np.float64), d32.astype(np.float64), np.array([0.1, 0.2, 0.3]), "attention")
    for g, w in zip(got, want):
        assert g.dtype == np.float64
        np.testing.assert_array_equal(g, w)
