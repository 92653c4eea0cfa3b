"""Conflict coordination of scenario-expert updates (spec section 3).

Client updates D_k (one flattened expert per row) are combined into one
consensus update d. CAGrad (default) solves, over the simplex,

    w* = argmin  w^T A 1/K + c ||g0|| sqrt(w^T A w),    A = D D^T, g0 = mean_k D_k

(equivalently <gw, g0> + c ||g0|| ||gw|| with gw = D^T w) and returns

    d = (g0 + c ||g0|| / ||gw|| * gw) / (1 + c^2).

By minimax duality (when gw != 0) (1 + c^2) d maximises min_k <D_k, .> over
the ball ||. - g0|| <= c ||g0||, and that maximum equals the minimal objective:
d helps the worst-served client as much as any step near the mean can. PCGrad and the plain mean are the alternatives.

Pure numpy/scipy. Inputs are rescaled before any inner product so that
updates anywhere in float64's range neither overflow nor lose precision.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

METHODS = ("cagrad", "pcgrad", "mean")

# ||gw|| below this fraction of max_k ||D_k|| counts as zero. Where the true
# gw* = 0 (0 in the hull of the updates and objective 0) the solver, which
# works on a QR factor of D^T, leaves a residue of ~1e-15; un-snapped, that
# residue would give d an arbitrary unit direction. Genuine optima this small
# need 0 within 1e-9 of the hull, where d is discontinuous anyway.
_GW_ZERO_RTOL = 1e-9
_SLSQP_OPTIONS = {"ftol": 1e-15, "maxiter": 500}
_POLISH_MIN_F = 1e-12  # |F*| (per unit ||g0||, largest update 1) below this is 0


def _check_updates(updates: np.ndarray) -> np.ndarray:
    d = np.asarray(updates, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
        raise ValueError(f"updates must have shape (K, P) with K, P >= 1, got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("updates contain NaN or inf")
    return d


def _check_gram(gram: np.ndarray) -> np.ndarray:
    a = np.asarray(gram, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"gram must be a square (K, K) matrix with K >= 1, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("gram contains NaN or inf")
    if np.any(np.diag(a) < 0):
        raise ValueError("gram has a negative diagonal entry; not a Gram matrix")
    scale = max(float(np.abs(a).max()), np.finfo(np.float64).tiny)
    if np.abs(a - a.T).max() > 1e-8 * scale:
        raise ValueError("gram is not symmetric")
    return (a + a.T) / 2.0


def _scaled(updates: np.ndarray) -> tuple[np.ndarray, float]:
    """Updates divided by their largest |entry| (1.0 if all zero), and that scale."""
    s = float(np.abs(updates).max())
    if s == 0.0:
        return updates, 1.0
    return updates / s, s


def cagrad_objective(w: np.ndarray, gram: np.ndarray, c: float) -> float:
    """F(w) = w^T A 1/K + c ||g0|| sqrt(w^T A w), evaluated from the Gram matrix A."""
    a = _check_gram(gram)
    w = np.asarray(w, dtype=np.float64)
    k = a.shape[0]
    if w.shape != (k,):
        raise ValueError(f"w must have shape ({k},), got {w.shape}")
    g0n = np.sqrt(max(float(a.sum()), 0.0)) / k
    q = max(float(w @ a @ w), 0.0)
    return float(w @ a.sum(axis=1) / k + c * g0n * np.sqrt(q))


def _project_simplex_clip(w: np.ndarray) -> np.ndarray:
    """Clip SLSQP's tiny bound violations and renormalise (uniform if degenerate)."""
    w = np.clip(np.nan_to_num(w, nan=0.0), 0.0, None)
    s = w.sum()
    return w / s if s > 0 else np.full_like(w, 1.0 / w.size)


def _factor_from_gram(a: np.ndarray) -> np.ndarray:
    """R (K, K) with R^T R = A (negative rounding eigenvalues clipped). _solve_factor takes
    any R with K columns: only R w, R^T v and its column norms are used."""
    lam, v = np.linalg.eigh(a)
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * v.T


def _factor_from_updates(d: np.ndarray) -> np.ndarray:
    """R (min(P, K), K) with R^T R = D D^T, from a QR of D^T: ||gw|| = ||R w|| without squaring."""
    return np.linalg.qr(d.T, mode="r")


def _solve_factor(r: np.ndarray, c: float) -> np.ndarray:
    """Simplex minimiser of <R w, R 1/K> + c ||R 1/K|| ||R w|| for a factor R of A.

    Working on R rather than A keeps ||gw|| accurate to rounding near gw = 0
    (sqrt of a rounded Gram entry is only good to ~1e-8). R is divided by its
    largest column norm (A by its largest diagonal) and the objective by
    ||g0||; neither moves the minimiser, and SLSQP's absolute tolerances then
    mean the same at every scale. The problem is convex but not smooth where
    gw = 0, so SLSQP starts from the uniform point and from every vertex, and
    the best of all starts and results is kept: F(w*) <= F(uniform), F(vertex).
    """
    k = r.shape[1]
    if k == 1:
        return np.ones(1)
    top = float(np.linalg.norm(r, axis=0).max())
    if top == 0.0:  # all updates zero: every w is optimal
        return np.full(k, 1.0 / k)
    r = r / top
    g0 = r.sum(axis=1) / k
    g0n = float(np.linalg.norm(g0))
    u0 = g0 / g0n if g0n > 0 else g0  # g0 / ||g0||; when g0 = 0, F = 0 everywhere
    cc = c if g0n > 0 else 0.0
    b = r.T @ u0

    def fun(w: np.ndarray) -> float:
        return float(w @ b + cc * np.linalg.norm(r @ w))

    def jac(w: np.ndarray) -> np.ndarray:
        rw = r @ w
        n = float(np.linalg.norm(rw))
        # at gw = 0 use the subgradient 0 of ||gw|| instead of 0/0
        return b + (cc / n) * (r.T @ rw) if n > 0 else b.copy()

    constraint = {"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(k)}

    def slsqp(x0: np.ndarray, unit: float = 1.0) -> np.ndarray:
        res = minimize(
            lambda w: fun(w) / unit, x0, jac=lambda w: jac(w) / unit, method="SLSQP",
            bounds=[(0.0, 1.0)] * k, constraints=[constraint], options=_SLSQP_OPTIONS,
        )
        return _project_simplex_clip(res.x)

    starts = [np.full(k, 1.0 / k)] + list(np.eye(k))
    candidates = starts + [slsqp(x0) for x0 in starts]
    values = [fun(w) for w in candidates]
    best = candidates[int(np.argmin(values))]
    # ftol is absolute: when F* is small (gw* short next to the largest update)
    # one more run on F / |F*| recovers the digits of w that d depends on.
    f_best = min(values)
    if abs(f_best) > _POLISH_MIN_F:
        polished = slsqp(best, abs(f_best))
        if fun(polished) <= f_best:
            best = polished
    return best


def _check_c(c: float) -> float:
    c = float(c)
    if not np.isfinite(c) or c < 0:
        raise ValueError(f"c must be finite and >= 0, got {c}")
    return c


def cagrad_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """Simplex weights w* minimising the CAGrad objective for Gram matrix A = D D^T.

    K = 1 gives [1.]; an all-zero Gram gives the uniform weights.
    """
    a = _check_gram(gram)
    c = _check_c(c)
    if a.shape[0] == 1:
        return np.ones(1)
    top = float(np.diag(a).max())
    if top <= 0.0:
        return np.full(a.shape[0], 1.0 / a.shape[0])
    return _solve_factor(_factor_from_gram(a / top), c)


def mean_update(updates: np.ndarray) -> np.ndarray:
    """g0 = mean_k D_k: the no-coordination ablation."""
    return _check_updates(updates).mean(axis=0)


def cagrad(updates: np.ndarray, c: float = 0.4) -> np.ndarray:
    """Conflict-averse consensus d of client updates (K, P) -> (P,).

    When g0 = 0 or the optimal gw = 0 (0 lies in the hull of the updates and
    no mix conflicts with g0 by more than c), the second term is 0 and
    d = g0 / (1 + c^2).
    """
    d, s = _scaled(_check_updates(updates))
    c = _check_c(c)
    g0 = d.mean(axis=0)
    w = _solve_factor(_factor_from_updates(d), c)
    gw = w @ d
    g0n = float(np.linalg.norm(g0))
    gwn = float(np.linalg.norm(gw))
    max_norm = float(np.linalg.norm(d, axis=1).max())
    out = g0.copy()
    if g0n > 0 and gwn > _GW_ZERO_RTOL * max_norm:
        out += (c * g0n / gwn) * gw
    return out * (s / (1.0 + c * c))


def pcgrad(updates: np.ndarray, seed: int = 0) -> np.ndarray:
    """PCGrad: project each D_i off every D_j it conflicts with (random order), then average.

    The projection is scale-invariant, so it runs on rescaled updates.
    """
    d_raw = _check_updates(updates)
    d, s = _scaled(d_raw)
    k = d.shape[0]
    sq = np.einsum("kp,kp->k", d, d)
    rng = np.random.default_rng(seed)
    out = np.zeros(d.shape[1])
    for i in range(k):
        g = d[i].copy()
        others = np.array([j for j in range(k) if j != i], dtype=int)
        for j in rng.permutation(others):
            if sq[j] == 0.0:
                continue
            dot = float(g @ d[j])
            if dot < 0.0:
                g -= (dot / sq[j]) * d[j]
        out += g
    return out * (s / k)


def coordinate(updates: np.ndarray, method: str, c: float = 0.4, seed: int = 0) -> np.ndarray:
    """Consensus update of scenario-expert updates (K, P) by ``method``."""
    if method == "cagrad":
        return cagrad(updates, c)
    if method == "pcgrad":
        return pcgrad(updates, seed)
    if method == "mean":
        return mean_update(updates)
    raise ValueError(f"unknown conflict method {method!r}; valid: {', '.join(METHODS)}")
