"""Personalized aggregation, the hypergradient and the SGD step on alpha / beta."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pfms_server.aggregation.personalize import HyperParam, hypergradient, personalized_next, sgd_step


# ------------------------------------------------------- personalized_next
def test_personalized_next_scalar() -> None:
    sent = np.array([1.0, 2.0])
    delta = np.array([0.5, -1.0])
    d = np.array([2.0, 4.0])
    np.testing.assert_allclose(personalized_next(sent, delta, d, 0.25), [2.0, 2.0])
    np.testing.assert_allclose(personalized_next(sent, delta, d, np.float64(0.0)), sent + delta)


def test_personalized_next_per_expert_alpha() -> None:
    # experts stacked on axis 0: alpha_e scales d_e only
    sent = np.zeros((2, 3))
    delta = np.ones((2, 3))
    d = np.ones((2, 3))
    out = personalized_next(sent, delta, d, np.array([0.0, 0.5]))
    np.testing.assert_allclose(out, [[1.0] * 3, [1.5] * 3])


def test_personalized_next_validation() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        personalized_next(np.zeros(3), np.zeros(3), np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="alpha"):
        personalized_next(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="alpha"):
        personalized_next(np.zeros(3), np.zeros(3), np.zeros(3), np.nan)


# ------------------------------------------------------------ hypergradient
def test_hypergradient_by_hand() -> None:
    # g = sent - trained = [0.5, -1, 2]; <g, [2, 1, 0.25]> = 1 - 1 + 0.5
    out = hypergradient(np.array([1.0, 2.0, 3.0]), np.array([0.5, 3.0, 1.0]), np.array([2.0, 1.0, 0.25]))
    assert out == pytest.approx(0.5)
    assert isinstance(out, float)


def test_hypergradient_is_dloss_dalpha_for_one_gd_step() -> None:
    # L(theta) = 1/2 ||theta - t*||^2, theta_sent(alpha) = base + alpha d. One local
    # GD step with rate eta gives trained = sent - eta grad L(sent), so
    # <sent - trained, d> / eta = <grad L, d> = dL(theta_sent(alpha)) / d alpha.
    rng = np.random.default_rng(0)
    base, d, target = rng.standard_normal((3, 5))
    alpha, eta, h = 0.3, 0.05, 1e-6
    loss = lambda a: 0.5 * np.sum((base + a * d - target) ** 2)  # noqa: E731
    sent = base + alpha * d
    trained = sent - eta * (sent - target)
    fd = (loss(alpha + h) - loss(alpha - h)) / (2 * h)
    assert hypergradient(sent, trained, d) / eta == pytest.approx(fd, rel=1e-6)


def test_hypergradient_validation() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        hypergradient(np.zeros(3), np.zeros(3), np.zeros((3, 1)))


# --------------------------------------------------------------- HyperParam
def test_hyperparam_roundtrip_through_json() -> None:
    for p in (
        HyperParam(np.float64(0.1)),
        HyperParam(0.1, momentum=np.float64(-0.02)),
        HyperParam(np.array([0.1, 0.2]), momentum=np.array([0.0, 1.0])),
        HyperParam([0.3]),
    ):
        q = HyperParam.from_dict(json.loads(json.dumps(p.to_dict())))
        assert q.value.dtype == np.float64 and q.value.shape == p.value.shape
        np.testing.assert_array_equal(q.value, p.value)
        if p.momentum is None:
            assert q.momentum is None
        else:
            np.testing.assert_array_equal(q.momentum, p.momentum)
    assert HyperParam(0.1).to_dict() == {"value": 0.1, "momentum": None}


def test_hyperparam_validation() -> None:
    with pytest.raises(ValueError, match=r"shape \(\) or \(E,\)"):
        HyperParam(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="momentum shape"):
        HyperParam(np.zeros(2), momentum=np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        HyperParam(np.nan)
    with pytest.raises(ValueError, match="value"):
        HyperParam.from_dict({"momentum": None})


# ------------------------------------------------------------------ sgd_step
def _torch_steps(init: np.ndarray, grads: list[np.ndarray], clamp: bool, **kw: float) -> list[np.ndarray]:
    """torch.optim.SGD on a float64 tensor, optionally clamp_ to [0, 1] after each step."""
    x = torch.tensor(init, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], **kw)
    out = []
    for g in grads:
        opt.zero_grad()
        x.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        if clamp:
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        out.append(x.detach().numpy().copy())
    return out


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_sgd_matches_torch_scalar(momentum: float) -> None:
    grads = [np.array(g) for g in (0.7, -0.3, 1.1, 0.0, -2.0, 0.4)]
    kw = {"lr": 0.01, "momentum": momentum, "weight_decay": 1e-4}
    ref = _torch_steps(np.array(0.5), grads, clamp=False, **kw)
    p = HyperParam(0.5)
    for g, r in zip(grads, ref):
        p = sgd_step(p, float(g), **kw)
        assert 0.0 < p.value < 1.0  # clamp inactive: pure SGD semantics
        np.testing.assert_allclose(p.value, r, rtol=0, atol=1e-15)
    assert (p.momentum is None) == (momentum == 0.0)


def test_sgd_matches_torch_vector_with_clamp() -> None:
    # big gradients so the clamp is hit at both ends; torch reference = step + clamp_
    rng = np.random.default_rng(1)
    grads = [rng.normal(scale=40.0, size=3) for _ in range(8)]
    kw = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    ref = _torch_steps(np.array([0.1, 0.5, 0.9]), grads, clamp=True, **kw)
    p = HyperParam(np.array([0.1, 0.5, 0.9]))
    hit = False
    for g, r in zip(grads, ref):
        p = sgd_step(p, g, **kw)
        np.testing.assert_allclose(p.value, r, rtol=0, atol=1e-14)
        assert np.all((p.value >= 0.0) & (p.value <= 1.0))
        hit |= bool(np.any((p.value == 0.0) | (p.value == 1.0)))
    assert hit


def test_sgd_clamp_bounds_and_no_mutation() -> None:
    p = HyperParam(0.1)
    q = sgd_step(p, 100.0)
    assert q.value == 0.0 and p.value == 0.1 and p.momentum is None
    assert q.momentum == pytest.approx(100.0 + 1e-4 * 0.1)
    r = sgd_step(q, -1e4)
    assert r.value == 1.0
    s = sgd_step(HyperParam(0.5), 100.0, lo=0.2, hi=0.8)
    assert s.value == 0.2


def test_sgd_validation() -> None:
    with pytest.raises(ValueError, match="grad shape"):
        sgd_step(HyperParam(np.zeros(2)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        sgd_step(HyperParam(0.5), float("nan"))
    with pytest.raises(ValueError, match="lo <= hi"):
        sgd_step(HyperParam(0.5), 0.0, lo=1.0, hi=0.0)
    with pytest.raises(ValueError, match="lr"):
        sgd_step(HyperParam(0.5), 0.0, lr=-1.0)


def test_personalized_next_one_alpha_per_entry_of_a_vector() -> None:
    # a 1-D tensor with one alpha per entry (per-expert alphas on a stacked vector)
    out = personalized_next(np.zeros(3), np.ones(3), np.array([2.0, 2.0, 2.0]), np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0])


def test_float32_inputs_are_computed_in_float64() -> None:
    rng = np.random.default_rng(7)
    s, dl, d = (rng.standard_normal(50).astype(np.float32) for _ in range(3))
    got = personalized_next(s, dl, d, 0.3)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, personalized_next(*(x.astype(np.float64) for x in (s, dl, d)), 0.3))
    assert hypergradient(s, dl, d) == hypergradient(*(x.astype(np.float64) for x in (s, dl, d)))


def test_hyperparam_is_float64_and_errors_name_the_field() -> None:
    hp = HyperParam([1, 0], momentum=[0, 1])  # ints in, float64 out
    assert hp.value.dtype == np.float64 and hp.momentum.dtype == np.float64
    assert HyperParam(1).value.dtype == np.float64 and HyperParam(1).to_dict() == {"value": 1.0, "momentum": None}
    with pytest.raises(ValueError, match="^value contains NaN"):
        HyperParam(np.nan)
    with pytest.raises(ValueError, match=r"^value must have shape"):
        HyperParam(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="^momentum contains NaN"):
        HyperParam(0.1, momentum=np.nan)


def test_sgd_defaults_are_the_specs_and_errors_name_the_setting() -> None:
    """Spec section 4: SGD with lr 0.01, momentum 0.9, weight decay 1e-4, clamped to [0, 1]."""
    p = HyperParam(0.5)
    assert sgd_step(p, 2.0).to_dict() == sgd_step(p, 2.0, lr=0.01, momentum=0.9, weight_decay=1e-4, lo=0.0,
                                                  hi=1.0).to_dict()
    step2 = sgd_step(sgd_step(p, 2.0), 1.0)
    assert step2.to_dict() == sgd_step(sgd_step(p, 2.0, 0.01, 0.9, 1e-4), 1.0, 0.01, 0.9, 1e-4).to_dict()
    assert sgd_step(p, 2.0).value == pytest.approx(0.5 - 0.01 * (2.0 + 1e-4 * 0.5))
    for name in ("lr", "momentum", "weight_decay"):
        with pytest.raises(ValueError, match=f"^{name} must be finite and >= 0"):
            sgd_step(p, 0.0, **{name: -1.0})
    assert sgd_step(p, 5.0, lo=0.3, hi=0.3).value == 0.3  # a one-point interval is allowed


def test_a_misshapen_alpha_names_the_shapes_it_accepts() -> None:
    """The message lists what alpha may be: a scalar, or one value per leading slice."""
    from pfms_server.aggregation.personalize import personalized_next

    z = np.zeros((3, 2))
    with pytest.raises(ValueError) as info:
        personalized_next(z, z, z, np.ones(2))
    assert str(info.value) == "alpha must have shape () or (3,) for params of shape (3, 2), got (2,)"
    s = np.zeros(())
    with pytest.raises(ValueError) as info:
        personalized_next(s, s, s, np.ones(2))
    assert str(info.value) == "alpha must have shape () for params of shape (), got (2,)"
