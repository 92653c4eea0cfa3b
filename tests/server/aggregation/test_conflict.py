"""Conflict coordination: CAGrad, PCGrad and the mean on client updates.

Notation as in pfms_server/aggregation/conflict.py: D (K, P) rows = client updates,
g0 = mean_k D_k, gw = sum_k w_k D_k, F(w) = <gw, g0> + c ||g0|| ||gw||
(= w^T A 1/K + c ||g0|| sqrt(w^T A w)), d = (g0 + c ||g0|| gw / ||gw||) / (1 + c^2).

References are closed forms derived in the comments, or a brute-force
minimiser of F computed straight from D (never from the module's Gram path).
"""

from __future__ import annotations

import numpy as np
import pytest

from pfms_server.aggregation.conflict import (
    METHODS,
    cagrad,
    cagrad_objective,
    cagrad_weights,
    coordinate,
    mean_update,
    pcgrad,
)

C = 0.4
SHRINK = (1 + C) / (1 + C * C)  # d / g0 whenever gw is parallel to g0


# ---------------------------------------------------------------- references
def objective(w: np.ndarray, D: np.ndarray, c: float) -> np.ndarray:
    """F for one w (K,) or many (N, K), computed from D directly."""
    g0 = D.mean(axis=0)
    gw = np.asarray(w) @ D
    return gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=-1)


def d_from_w(w: np.ndarray, D: np.ndarray, c: float) -> np.ndarray:
    """The spec's d for given weights; second term 0 when gw (or g0) vanishes."""
    g0 = D.mean(axis=0)
    gw = w @ D
    n0, nw = np.linalg.norm(g0), np.linalg.norm(gw)
    out = g0.copy()
    if n0 > 0 and nw > 1e-9 * np.linalg.norm(D, axis=1).max():
        out += c * n0 / nw * gw
    return out / (1 + c * c)


def brute_k2(D: np.ndarray, c: float) -> np.ndarray:
    """argmin F over w = (t, 1 - t): grid of 2001 points, then golden section to 1e-12.

    F is convex in t, so the bracket around the best grid point holds the minimum.
    """
    f = lambda t: objective(np.array([t, 1 - t]), D, c)  # noqa: E731
    ts = np.linspace(0, 1, 2001)
    i = int(np.argmin(objective(np.stack([ts, 1 - ts], 1), D, c)))
    lo, hi = ts[max(i - 1, 0)], ts[min(i + 1, 2000)]
    r = (np.sqrt(5) - 1) / 2
    while hi - lo > 1e-12:
        m1, m2 = hi - r * (hi - lo), lo + r * (hi - lo)
        if f(m1) < f(m2):
            hi = m2
        else:
            lo = m1
    t = min((lo, hi, (lo + hi) / 2, 0.0, 1.0), key=f)
    return np.array([t, 1 - t])


def brute_k3(D: np.ndarray, c: float, n: int = 200) -> np.ndarray:
    """argmin F on the 2-simplex: grid of step 1/n, then a 9x9 pattern search.

    The pattern moves to its best point, and halves its step only when the
    centre is already best, so it can walk any distance along narrow valleys.
    """
    def pts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ok = (a >= 0) & (b >= 0) & (a + b <= 1)
        return np.stack([a[ok], b[ok], np.clip(1 - a[ok] - b[ok], 0, None)], 1)

    a, b = (x.ravel() for x in np.meshgrid(np.arange(n + 1) / n, np.arange(n + 1) / n))
    W = pts(a, b)
    best = W[np.argmin(objective(W, D, c))]
    f_best, h = objective(best, D, c), 1.0 / n
    for _ in range(5000):
        if h < 1e-13:
            break
        s = np.linspace(-4 * h, 4 * h, 9)
        A, B = (x.ravel() for x in np.meshgrid(best[0] + s, best[1] + s))
        W = pts(A, B)
        f = objective(W, D, c)
        i = int(np.argmin(f))
        if f[i] < f_best:
            best, f_best = W[i], f[i]
        else:
            h /= 2
    return best


def brute(D: np.ndarray, c: float) -> np.ndarray:
    return {2: brute_k2, 3: brute_k3}[D.shape[0]](D, c)


def check_against_brute(D: np.ndarray, c: float = C, tol: float = 1e-5) -> np.ndarray:
    """d and F(w*) agree with the brute-force minimiser; returns the reference w."""
    wb = brute(D, c)
    w = cagrad_weights(D @ D.T, c)
    scale = np.abs(D).max()
    assert objective(w, D, c) == pytest.approx(objective(wb, D, c), abs=tol * scale**2)
    np.testing.assert_allclose(cagrad(D, c), d_from_w(wb, D, c), atol=tol * scale, rtol=0)
    return wb


# ------------------------------------------------------- hand-checked CAGrad
def test_orthogonal_equal_norm() -> None:
    # D = r e1, r e2: A = r^2 I, g0 = r (e1 + e2) / 2, ||g0|| = r / sqrt(2).
    # F(w) = r^2 / 2 (w1 + w2) + c r^2 / sqrt(2) ||w|| = r^2/2 + c r^2/sqrt(2) ||w||:
    # minimal at the min-norm simplex point w = (1/2, 1/2), unique. Then gw = g0,
    # so d = g0 (1 + c) / (1 + c^2).
    r = 2.5
    D = np.array([[r, 0.0, 0.0], [0.0, r, 0.0]])
    w = cagrad_weights(D @ D.T, C)
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(cagrad(D, C), D.mean(0) * SHRINK, atol=1e-9)
    np.testing.assert_allclose(brute_k2(D, C), [0.5, 0.5], atol=1e-6)
    check_against_brute(D)


def test_orthogonal_unequal_norm_at_vertex() -> None:
    # D = a e1, b e2 with a = 3, b = 1: g0 = (a, b)/2, n = ||g0|| = sqrt(a^2+b^2)/2.
    # F(t) for w = (t, 1-t): (t a^2 + (1-t) b^2)/2 + c n sqrt(t^2 a^2 + (1-t)^2 b^2),
    # convex, F'(0) = (a^2 - b^2)/2 - c n b = 4 - 0.4 * 1.581 > 0, so w* = (0, 1)
    # (unique), gw = b e2 and d = (g0 + c n e2) / (1 + c^2).
    a, b = 3.0, 1.0
    D = np.array([[a, 0.0], [0.0, b]])
    n = np.hypot(a, b) / 2
    np.testing.assert_allclose(cagrad_weights(D @ D.T, C), [0.0, 1.0], atol=1e-7)
    expected = (np.array([a / 2, b / 2]) + C * n * np.array([0.0, 1.0])) / (1 + C * C)
    np.testing.assert_allclose(cagrad(D, C), expected, atol=1e-9)
    check_against_brute(D)


def test_orthogonal_unequal_norm_interior() -> None:
    # a = 1.2, b = 1: F'(0) = 0.22 - 0.4 * 0.781 < 0 and F'(1) > 0, so w* is interior;
    # no tidy closed form, so compare with the brute-force minimiser (w unique since
    # the rows are independent and F* > 0 makes gw* unique).
    D = np.array([[1.2, 0.0], [0.0, 1.0]])
    wb = check_against_brute(D)
    assert 0 < wb[0] < 1
    np.testing.assert_allclose(cagrad_weights(D @ D.T, C), wb, atol=1e-5)


def test_exactly_opposite_equal() -> None:
    # D = v, -v: g0 = 0, so both terms of d vanish: d = 0 (F = 0 for every w).
    v = np.array([1.0, -2.0, 0.5])
    D = np.stack([v, -v])
    np.testing.assert_array_equal(cagrad(D, C), np.zeros(3))
    w = cagrad_weights(D @ D.T, C)
    assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(1.0)


def test_exactly_opposite_unequal() -> None:
    # D = v, -2v: g0 = -v/2, ||g0|| = |v|/2, gw = s v with s = 3t - 2 in [-2, 1].
    # F = |v|^2/2 (-s + c|s|): s > 0 gives (c - 1)s, least at s = 1 (t = 1);
    # s < 0 gives -(1 + c)s > 0. So w* = (1, 0), gw = v and
    # d = (-v/2 + c v/2) / (1 + c^2) = -(1 - c) v / (2 (1 + c^2)).
    v = np.array([2.0, 1.0])
    D = np.stack([v, -2 * v])
    np.testing.assert_allclose(cagrad_weights(D @ D.T, C), [1.0, 0.0], atol=1e-7)
    expected = -(1 - C) * v / (2 * (1 + C * C))
    np.testing.assert_allclose(cagrad(D, C), expected, atol=1e-9)
    check_against_brute(D)
    # So d need NOT have a non-negative inner product with every D_k: here
    # <D_1, d> < 0. What does hold is the max-min property tested below.
    assert D[0] @ cagrad(D, C) < 0


def test_identical_updates() -> None:
    # D_k = v for all k: gw = v for every w (F constant, w not unique),
    # d = (v + c v) / (1 + c^2).
    v = np.array([0.3, -1.0, 2.0, 0.0])
    D = np.stack([v, v, v])
    np.testing.assert_allclose(cagrad(D, C), v * SHRINK, atol=1e-12)
    check_against_brute(D)


def test_parallel_updates() -> None:
    # D = v, 2v: g0 = 1.5 v, gw = (2 - t) v, F = (2 - t)(1.5 + 1.5 c)|v|^2,
    # least at t = 1: w* = (1, 0), gw = v, d = g0 (1 + c)/(1 + c^2).
    v = np.array([1.0, 2.0])
    D = np.stack([v, 2 * v])
    np.testing.assert_allclose(cagrad_weights(D @ D.T, C), [1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(cagrad(D, C), 1.5 * v * SHRINK, atol=1e-12)


def test_single_client() -> None:
    # K = 1: w = [1], gw = g0 = D_1, d = D_1 (1 + c)/(1 + c^2) (not D_1 unless c = 0).
    D = np.array([[1.0, -3.0, 0.25]])
    np.testing.assert_array_equal(cagrad_weights(D @ D.T, C), [1.0])
    np.testing.assert_allclose(cagrad(D, C), D[0] * SHRINK, atol=1e-15)
    np.testing.assert_allclose(cagrad(D, 0.0), D[0], atol=1e-15)


def test_one_zero_update_of_two() -> None:
    # D = v, 0: g0 = v/2, gw = t v, F = t (1 + c)|v|^2 / 2, least at t = 0 (unique):
    # gw = 0, so the second term is 0 and d = g0 / (1 + c^2).
    v = np.array([1.0, 2.0, -1.0])
    D = np.stack([v, np.zeros(3)])
    np.testing.assert_allclose(cagrad_weights(D @ D.T, C), [0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(cagrad(D, C), v / 2 / (1 + C * C), atol=1e-12)
    check_against_brute(D)


def test_one_zero_update_of_three() -> None:
    # D = e1, (-3, 0.5), 0: cos(e1, g0) = -0.97 < -c, so the zero vertex is not
    # optimal; compare with the brute-force minimiser on the 2-simplex.
    D = np.array([[1.0, 0.0], [-3.0, 0.5], [0.0, 0.0]])
    check_against_brute(D)


def test_zero_in_hull_without_strong_conflict() -> None:
    # D = e1, -e1, e2: 0 = (D_1 + D_2)/2 lies in the hull and every hull direction
    # has cos(., g0) >= 0 > -c, so F >= 0 = F(1/2, 1/2, 0): gw* = 0 and
    # d = g0 / (1 + c^2) = e2 / (3 (1 + c^2)) (no spurious direction from rounding).
    D = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    for scale in (1e-8, 1.0, 1e8):
        Dq = D @ q.T * scale
        np.testing.assert_allclose(
            cagrad(Dq, C), Dq.mean(0) / (1 + C * C), atol=1e-12 * scale, rtol=0
        )
    check_against_brute(D)


def test_all_zero_updates() -> None:
    D = np.zeros((4, 5))
    np.testing.assert_allclose(cagrad_weights(D @ D.T, C), np.full(4, 0.25))
    np.testing.assert_array_equal(cagrad(D, C), np.zeros(5))


def test_c_zero_is_mean() -> None:
    rng = np.random.default_rng(0)
    for k in range(1, 6):
        D = rng.standard_normal((k, 7))
        np.testing.assert_allclose(cagrad(D, 0.0), D.mean(0), atol=1e-14)


# ------------------------------------------------------- random and extreme
def _random_cases(k_values: range, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = int(rng.choice(k_values))
        p = int(rng.integers(1, 9))
        D = rng.standard_normal((k, p))
        if i % 3 == 1:  # make 0 lie in the hull of the updates
            D -= rng.dirichlet(np.ones(k)) @ D
        if i % 3 == 2:  # rows of very different size
            D *= 10.0 ** rng.uniform(-3, 3, size=(k, 1))
        c = float(rng.choice([0.1, 0.4, 0.9, 2.0]))
        scale = float(rng.choice([1e-8, 1.0, 1e8]))
        yield D * scale, c


@pytest.mark.parametrize("seed", [0, 1])
def test_random_small_k_matches_brute_force(seed: int) -> None:
    for D, c in _random_cases(range(2, 4), 20, seed):
        check_against_brute(D, c)


def test_random_properties_k2_to_6() -> None:
    """Properties that hold for every input, at scales 1e-8, 1 and 1e8."""
    for D, c in _random_cases(range(2, 7), 80, 42):
        k = D.shape[0]
        scale = np.abs(D).max()
        gram = D @ D.T
        w = cagrad_weights(gram, c)
        d = cagrad(D, c)
        assert np.all(np.isfinite(w)) and np.all(np.isfinite(d))
        assert np.all(w >= 0) and w.sum() == pytest.approx(1.0, abs=1e-12)
        # best of the starts is kept: F(w*) <= F(uniform), F(every vertex). The
        # Gram matrix carries rounding of ~1e-16 * scale^2, so sqrt(w^T A w) is
        # only good to ~1e-8 * scale: compare to that accuracy.
        f_star = objective(w, D, c)
        tol = 1e-7 * scale**2
        for start in [np.full(k, 1 / k), *np.eye(k)]:
            assert f_star <= objective(start, D, c) + tol
        assert cagrad_objective(w, gram, c) == pytest.approx(f_star, abs=tol)
        # (1 + c^2) d maximises min_k <D_k, .> over the ball around g0 of radius
        # c ||g0||, which contains g0 itself: it never serves the worst client
        # worse than the plain mean does.
        g0 = D.mean(0)
        assert np.min(D @ d) * (1 + c * c) >= np.min(D @ g0) - 1e-9 * scale**2
        gw = w @ D
        # When gw* is much shorter than the largest update, F is nearly flat in
        # directions that still move d (d is ill-conditioned, ~1e-6 relative),
        # so check the identities below only where gw* is not tiny.
        if np.linalg.norm(gw) > 1e-3 * np.linalg.norm(D, axis=1).max():
            # ... and by minimax duality that max-min value is F(w*),
            assert np.min(D @ d) * (1 + c * c) == pytest.approx(f_star, abs=1e-7 * scale**2)
            # with (1 + c^2) d on the ball's boundary.
            assert np.linalg.norm(d * (1 + c * c) - g0) == pytest.approx(
                c * np.linalg.norm(g0), abs=1e-9 * scale
            )


def test_mixed_huge_and_tiny_rows_never_nan() -> None:
    rng = np.random.default_rng(7)
    for _ in range(30):
        k = int(rng.integers(2, 7))
        D = rng.standard_normal((k, 4)) * rng.choice([1e-8, 1e8], size=(k, 1))
        for x in (D, D * 1e150, D * 1e-150):
            assert np.all(np.isfinite(cagrad(x, C)))
            assert np.all(np.isfinite(pcgrad(x)))
        assert np.all(np.isfinite(cagrad_weights(D @ D.T, C)))


def test_scale_equivariance() -> None:
    rng = np.random.default_rng(11)
    D = rng.standard_normal((4, 6))
    ref = cagrad(D, C)
    for s in (1e-8, 1e8):
        np.testing.assert_allclose(cagrad(D * s, C), ref * s, rtol=1e-7, atol=1e-9 * s)


# --------------------------------------------------------------- validation
def test_validation() -> None:
    with pytest.raises(ValueError, match="shape"):
        cagrad(np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        cagrad(np.ones((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        cagrad(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="c must"):
        cagrad(np.ones((2, 2)), -0.1)
    with pytest.raises(ValueError, match="square"):
        cagrad_weights(np.ones((2, 3)), C)
    with pytest.raises(ValueError, match="symmetric"):
        cagrad_weights(np.array([[1.0, 0.5], [0.0, 1.0]]), C)
    with pytest.raises(ValueError, match="negative"):
        cagrad_weights(np.array([[-1.0, 0.0], [0.0, 1.0]]), C)


# ------------------------------------------------------------------- PCGrad
def test_pcgrad_two_conflicting_by_hand() -> None:
    # D1 = (1, 0), D2 = (-1, 1): D1.D2 = -1 < 0.
    # g1 = D1 - (-1)/2 D2 = (0.5, 0.5);  g2 = D2 - (-1)/1 D1 = (0, 1).
    # mean = (0.25, 0.75); each projection is orthogonal to the other update.
    D = np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(pcgrad(D), [0.25, 0.75], atol=1e-15)
    assert np.array([0.5, 0.5]) @ D[1] == 0 and np.array([0.0, 1.0]) @ D[0] == 0


def test_pcgrad_non_conflicting_is_mean() -> None:
    rng = np.random.default_rng(2)
    D = np.abs(rng.standard_normal((5, 4)))  # all pairwise products >= 0
    np.testing.assert_allclose(pcgrad(D, seed=3), D.mean(0), atol=1e-15)


def test_pcgrad_zero_update_and_single() -> None:
    # zero D_j is skipped; g for the zero row stays 0:
    # g1 = (0.5, 0.5), g2 = 0, g3 = (0, 1) -> mean (0.5, 1.5)/3.
    D = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(pcgrad(D), np.array([0.5, 1.5]) / 3, atol=1e-15)
    np.testing.assert_array_equal(pcgrad(D[:1]), D[0])
    np.testing.assert_array_equal(pcgrad(np.zeros((3, 2))), np.zeros(2))


def test_pcgrad_deterministic_per_seed() -> None:
    rng = np.random.default_rng(0)
    D = rng.standard_normal((4, 3))
    for seed in range(5):
        np.testing.assert_array_equal(pcgrad(D, seed), pcgrad(D, seed))
    # with K >= 3 the projection order matters, so seeds do differ
    assert len({tuple(np.round(pcgrad(D, s), 12)) for s in range(10)}) > 1


def test_pcgrad_scale_equivariant() -> None:
    D = np.array([[1.0, 0.0], [-1.0, 1.0], [0.2, -0.7]])
    for s in (1e-200, 1e-8, 1e8, 1e200):
        np.testing.assert_allclose(pcgrad(D * s, seed=1), pcgrad(D, seed=1) * s, rtol=1e-12)


# ----------------------------------------------------------------- dispatch
def test_coordinate_dispatch() -> None:
    rng = np.random.default_rng(5)
    D = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(coordinate(D, "mean"), mean_update(D))
    np.testing.assert_array_equal(mean_update(D), D.mean(0))
    np.testing.assert_array_equal(coordinate(D, "cagrad", c=0.3), cagrad(D, 0.3))
    np.testing.assert_array_equal(coordinate(D, "pcgrad", seed=4), pcgrad(D, 4))
    with pytest.raises(ValueError, match="cagrad, pcgrad, mean"):
        coordinate(D, "mgda")
    assert set(METHODS) == {"cagrad", "pcgrad", "mean"}


def test_gram_weights_at_any_scale_and_dtype() -> None:
    """w* does not depend on the Gram matrix's scale (A and s A have one minimiser) nor on
    its dtype: a float32 or integer Gram is solved in float64."""
    D = np.array([[1.0, 0.2, 0.0], [-0.6, 1.0, 0.3], [0.1, -0.8, 1.0]])
    A = D @ D.T
    want = cagrad_weights(A, C)
    for s in (1e-200, 1e-30, 1e30, 1e200):  # the solver's normalisation neither under- nor overflows
        np.testing.assert_allclose(cagrad_weights(A * s, C), want, rtol=1e-7, atol=1e-9, err_msg=str(s))
    a32 = A.astype(np.float32)
    np.testing.assert_array_equal(cagrad_weights(a32, C), cagrad_weights(a32.astype(np.float64), C))
    ai = np.array([[4, -2, 0], [-2, 5, 1], [0, 1, 3]])
    np.testing.assert_array_equal(cagrad_weights(ai, C), cagrad_weights(ai.astype(np.float64), C))


def test_gram_symmetry_tolerance_is_relative() -> None:
    """Rounding-level asymmetry passes at every scale; a real asymmetry fails at every scale."""
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    for s in (1e-6, 1.0, 1e6):
        nearly = A * s
        nearly[0, 1] *= 1 + 1e-12
        cagrad_weights(nearly, C)
        off = A * s
        off[0, 1] *= 1.01
        with pytest.raises(ValueError, match="symmetric"):
            cagrad_weights(off, C)


def test_coordinate_defaults_are_the_specs() -> None:
    """Default c = 0.4 (spec section 3); PCGrad's default order seed is 0 in both entry points."""
    rng = np.random.default_rng(8)
    D = rng.standard_normal((4, 6))
    np.testing.assert_array_equal(coordinate(D, "cagrad"), cagrad(D, 0.4))
    np.testing.assert_array_equal(cagrad(D), cagrad(D, 0.4))
    np.testing.assert_array_equal(coordinate(D, "pcgrad"), pcgrad(D, seed=0))
    np.testing.assert_array_equal(pcgrad(D), pcgrad(D, seed=0))
    assert any(not np.array_equal(pcgrad(D, seed=0), pcgrad(D, seed=s)) for s in range(1, 6))  # the seed matters here


def test_fewer_parameters_than_clients() -> None:
    """P < K: the QR factor of D^T has P rows, not K; the result still matches brute force."""
    rng = np.random.default_rng(9)
    for k, p in ((2, 1), (3, 1), (3, 2)):
        check_against_brute(rng.standard_normal((k, p)))
    for k, p in ((5, 2), (6, 3)):  # beyond brute force: the QR path (P x K factor) agrees with the Gram path (K x K)
        D = rng.standard_normal((k, p))
        np.testing.assert_allclose(cagrad(D, C), d_from_w(cagrad_weights(D @ D.T, C), D, C), atol=1e-6)


def test_simplex_clip_repairs_solver_output() -> None:
    from pfms_server.aggregation.conflict import _project_simplex_clip as clip

    np.testing.assert_array_equal(clip(np.array([np.nan, 0.5])), [0.0, 1.0])  # NaN counts as 0
    np.testing.assert_allclose(clip(np.array([-1e-12, 0.25, 0.75])), [0.0, 0.25, 0.75])  # bound violations
    np.testing.assert_allclose(clip(np.array([0.2, 0.2])), [0.5, 0.5])  # renormalised
    np.testing.assert_array_equal(clip(np.array([0.0, 0.0, 0.0])), np.full(3, 1 / 3))  # degenerate: uniform
    np.testing.assert_array_equal(clip(np.array([-1.0, np.nan])), [0.5, 0.5])
    assert clip(np.array([0.3, 0.7])).dtype == np.float64


def test_nearly_opposite_updates_reach_the_minimum() -> None:
    """D_2 close to -r D_1: F* is tiny next to the updates, where SLSQP's absolute tolerance alone
    stops early; the solver's second pass on F / |F*| must reach the brute-force minimum to 1e-11
    of ||g0|| (the first pass alone misses by up to ~1e-9 on these cases)."""
    from pfms_server.aggregation.conflict import _factor_from_updates, _solve_factor

    rng = np.random.default_rng(11)
    for _ in range(40):
        p = int(rng.integers(2, 6))
        D = np.zeros((2, p))
        D[0] = rng.standard_normal(p)
        D[1] = -D[0] * rng.uniform(0.5, 2.0) + 10.0 ** rng.uniform(-8, -1) * rng.standard_normal(p)
        c = float(rng.choice([0.1, 0.4, 1.0]))
        w = _solve_factor(_factor_from_updates(D), c)
        excess = objective(w, D, c) - objective(brute_k2(D, c), D, c)
        assert excess <= 1e-11 * np.linalg.norm(D.mean(axis=0)), (D, c, excess)


def test_zero_mean_update_raises_no_warning() -> None:
    import warnings

    D = np.array([[1.0, 2.0], [-1.0, -2.0]])  # g0 = 0: every w is a minimiser, F = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cagrad(D, C), [0.0, 0.0])
        np.testing.assert_allclose(cagrad_weights(D @ D.T, C).sum(), 1.0)


@pytest.mark.parametrize("method", ["mean", "cagrad", "pcgrad"])
def test_float32_updates_are_computed_in_float64(method):
    """Clients upload float32: the consensus of float32 updates is the float64 consensus of
    the same values, to the last bit, and comes back as float64."""
    rng = np.random.default_rng(11)
    u32 = rng.normal(size=(4, 37)).astype(np.float32) * np.float32(1e-3)
    got = coordinate(u32, method, c=0.4, seed=3)
    want = coordinate(u32.astype(np.float64), method, c=0.4, seed=3)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_a_degenerate_solver_answer_falls_back_to_uniform_weights():
    """SLSQP can return NaN or all-negative weights on a broken problem; the weights used
    are then uniform, never NaN and never a wrong shape."""
    from pfms_server.aggregation.conflict import _project_simplex_clip

    uniform = _project_simplex_clip(np.array([np.nan, -1.0, np.nan]))
    assert uniform.shape == (3,) and uniform.dtype == np.float64
    np.testing.assert_array_equal(uniform, np.full(3, 1 / 3))
    np.testing.assert_array_equal(_project_simplex_clip(np.array([np.nan, 3.0, 1.0])), [0.0, 0.75, 0.25])
