"""aggregate_round against a second, plain implementation of the spec, over several rounds.

The oracle below is written from docs' spec (sections 1-5 and "Per round"), with
loops instead of the production code's flattening and state objects: G by
sample-weighted FedAvg, S by a consensus update d per expert and
theta_k = sent_k + D_k + alpha_k d, towers by update attention scaled by beta,
and alpha/beta by the hypergradient <theta_sent - theta_trained, direction> with
torch.optim.SGD's rule (momentum, weight decay) clamped to [0, 1]. Its only
borrowed pieces are conflict.cagrad/pcgrad, which tests/server/aggregation/test_conflict.py checks
against brute force.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pfms_server.aggregation.conflict import cagrad, pcgrad
from pfms_server.aggregation.pfmsmtrec import AggregationConfig, aggregate_round, expert_units, flat, hyperparams, unflat
from pfms_server.aggregation.state import ServerState

SCEN = ["ES", "FR", "NL"]
COUNTS = {"ES": 30, "FR": 10, "NL": 60}
SHAPES = {
    "experts.global.0.layers.0.linear.weight": (3, 4),
    "experts.global.0.layers.0.linear.bias": (3,),
    "experts.scenario.0.layers.0.linear.weight": (3, 4),
    "experts.scenario.0.layers.0.linear.bias": (3,),
    "experts.scenario.1.layers.0.linear.weight": (3, 4),
    "experts.scenario.1.layers.0.linear.bias": (3,),
    "towers.0.mlp.layers.0.linear.weight": (2, 3),
    "towers.0.mlp.layers.0.linear.bias": (2,),
    "towers.0.out.weight": (1, 2),
    "towers.0.out.bias": (1,),
    "towers.1.mlp.layers.0.linear.weight": (2, 3),
    "towers.1.out.weight": (1, 2),
}
BN = {  # uploaded only when FedBN is off
    "experts.global.0.layers.0.bn.running_mean": (3,),
    "experts.scenario.0.layers.0.bn.weight": (3,),
    "experts.scenario.0.layers.0.bn.num_batches_tracked": (),
    "towers.0.mlp.layers.0.bn.running_var": (2,),
}


def strategy(**over) -> dict:
    s = {
        "fedbn": True,
        "conflict": {"method": "cagrad", "c": 0.4},
        "personalization": {"mode": "learned", "alpha_init": 0.1, "alpha_fixed": 1.0, "per_expert": False,
                            "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2},
        "towers": {"mode": "attention", "beta_init": 0.2, "learn_beta": True, "lr": 0.03, "momentum": 0.5,
                   "weight_decay": 1e-3},
    }
    for path, value in over.items():
        node = s
        *head, last = path.split("__")
        for h in head:
            node = node[h]
        node[last] = value
    return s


def init_arrays(fedbn: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = dict(SHAPES) if fedbn else {**SHAPES, **BN}
    out = {}
    for n, shape in shapes.items():
        if n.endswith("num_batches_tracked"):
            out[n] = np.array(rng.integers(0, 50), dtype=np.int64)
        else:
            out[n] = rng.normal(size=shape).astype(np.float32)
    return out


def train(sent: dict[str, dict[str, np.ndarray]], rnd: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Fake local training: each scenario moves every tensor; ES and NL's S updates conflict."""
    out = {}
    for i, k in enumerate(sorted(sent)):
        rng = np.random.default_rng(1000 * seed + 10 * rnd + i)
        up = {}
        for n, v in sent[k].items():
            if v.dtype.kind in "iu":
                up[n] = v + np.int64(7 + i)
                continue
            step = rng.normal(scale=0.1, size=v.shape)
            if "scenario" in n:
                step += (0.2 if k == "ES" else -0.25 if k == "NL" else 0.05)
            up[n] = (v + step).astype(v.dtype)
        out[k] = up
    return out


INIT_DTYPES = {n: v.dtype for n, v in init_arrays(False).items()}


# ----------------------------------------------------------------------------------- the oracle
def is_bn(n: str) -> bool:
    return "bn" in n.split(".")[:-1]


def sgd(value, buf, grad, lr, momentum, wd):
    g = np.asarray(grad, dtype=np.float64) + wd * value
    buf = g if buf is None else momentum * buf + g
    return np.clip(value - lr * buf, 0.0, 1.0), buf


class Oracle:
    def __init__(self, s: dict, init: dict[str, np.ndarray], seed: int = 0):
        self.s, self.seed, self.round = s, seed, 0
        self.init = {n: v.astype(np.float64) if v.dtype.kind == "f" else v for n, v in init.items()}
        self.g = {n: v for n, v in self.init.items() if n.startswith("experts.global")}
        self.own: dict[str, dict[str, np.ndarray]] = {}
        self.alpha: dict[str, np.ndarray] = {}
        self.alpha_buf: dict[str, np.ndarray | None] = {}
        self.alpha_dir: dict[str, dict[str, np.ndarray]] = {}
        self.beta: dict[str, dict[str, float]] = {}
        self.beta_buf: dict[str, dict[str, np.ndarray | None]] = {}
        self.beta_dir: dict[str, dict[str, np.ndarray]] = {}
        self.units = sorted({".".join(n.split(".")[:3]) for n in init if n.startswith("experts.scenario")})
        self.layers = sorted({n.rsplit(".", 1)[0] for n in init if n.startswith("towers")})

    def sent(self, k: str) -> dict[str, np.ndarray]:
        return {**self.init, **self.g, **self.own.get(k, {})}

    def alpha_value(self, k: str) -> np.ndarray:
        p = self.s["personalization"]
        a = p["alpha_fixed"] if p["mode"] == "fixed" else p["alpha_init"]
        return np.full(len(self.units), a) if p["per_expert"] else np.array(a)

    def unit_names(self, u: str) -> list[str]:
        return sorted(n for n in self.init if n.startswith(u + ".") and not is_bn(n))

    def step(self, uploads: dict[str, dict[str, np.ndarray]], counts: dict[str, int]) -> None:
        s, p, t = self.s, self.s["personalization"], self.s["towers"]
        scen = sorted(uploads)
        sent = {k: self.sent(k) for k in scen}
        local = {k: {n: v.astype(np.float64) if v.dtype.kind == "f" else v for n, v in uploads[k].items()}
                 for k in scen}
        for k in scen:
            if k not in self.alpha:
                self.alpha[k], self.alpha_buf[k], self.alpha_dir[k] = self.alpha_value(k), None, {}
                self.beta[k] = {layer: t["beta_init"] for layer in self.layers}
                self.beta_buf[k] = {layer: None for layer in self.layers}
                self.beta_dir[k] = {}
                self.own[k] = {n: v for n, v in self.init.items() if not n.startswith("experts.global")}
        # hypergradients with this round's local tensors
        for k in scen:
            if p["mode"] == "learned" and self.alpha_dir[k]:
                grads = []
                for u in self.units:
                    names = self.unit_names(u)
                    g = sum(float(np.sum((sent[k][n] - local[k][n]) * self.alpha_dir[k][n])) for n in names)
                    grads.append(g)
                grad = np.array(grads) if p["per_expert"] else np.array(sum(grads))
                self.alpha[k], self.alpha_buf[k] = sgd(self.alpha[k], self.alpha_buf[k], grad, p["lr"],
                                                       p["momentum"], p["weight_decay"])
            if t["mode"] == "attention" and t["learn_beta"] and self.beta_dir[k]:
                for layer in self.layers:
                    names = [n for n in self.beta_dir[k] if n.rsplit(".", 1)[0] == layer]
                    if not names:
                        continue
                    g = sum(float(np.sum((sent[k][n] - local[k][n]) * self.beta_dir[k][n])) for n in names)
                    self.beta[k][layer], self.beta_buf[k][layer] = sgd(
                        np.array(self.beta[k][layer]), self.beta_buf[k][layer], g, t["lr"], t["momentum"],
                        t["weight_decay"])
        w = np.array([counts[k] for k in scen], dtype=np.float64)
        w = w / w.sum()
        names = sorted(uploads[scen[0]])
        for n in names:  # G, and BN when it is uploaded: the sample-weighted mean
            if n.startswith("experts.global") or is_bn(n):
                avg = sum(wi * local[k][n].astype(np.float64) for wi, k in zip(w, scen))
                if local[scen[0]][n].dtype.kind in "iu":
                    avg = np.rint(avg).astype(np.int64)
                if n.startswith("experts.global"):
                    self.g[n] = avg
                else:
                    for k in scen:
                        self.own[k][n] = avg
        for i, u in enumerate(self.units):  # S: theta_k = sent_k + D_k + alpha_k d
            un = self.unit_names(u)
            D = np.stack([np.concatenate([(local[k][n] - sent[k][n]).ravel() for n in un]) for k in scen])
            method = s["conflict"]["method"]
            d = (cagrad(D, s["conflict"]["c"]) if method == "cagrad" else
                 pcgrad(D, self.seed + self.round) if method == "pcgrad" else D.mean(axis=0))
            for j, k in enumerate(scen):
                a = float(self.alpha[k][i]) if p["per_expert"] else float(self.alpha[k])
                pos = 0
                for n in un:
                    size = sent[k][n].size
                    dn = d[pos:pos + size].reshape(sent[k][n].shape)
                    self.own[k][n] = sent[k][n] + (local[k][n] - sent[k][n]) + a * dn
                    self.alpha_dir[k][n] = dn
                    pos += size
        if t["mode"] != "local":  # towers: attention over the updates of the same tensor
            for n in names:
                if not n.startswith("towers") or is_bn(n):
                    continue
                deltas = [(local[k][n] - sent[k][n]).ravel() for k in scen]
                size = deltas[0].size
                for j, k in enumerate(scen):
                    if t["mode"] == "fedavg":
                        self.own[k][n] = sum(wi * local[kk][n] for wi, kk in zip(w, scen))
                        continue
                    logits = np.array([float(deltas[j] @ dd) / math.sqrt(size) for dd in deltas])
                    a = np.exp(logits - logits.max())
                    a /= a.sum()
                    u = sum(ai * dd for ai, dd in zip(a, deltas)).reshape(sent[k][n].shape)
                    layer = n.rsplit(".", 1)[0]
                    self.own[k][n] = sent[k][n] + (local[k][n] - sent[k][n]) + self.beta[k][layer] * u
                    self.beta_dir[k][n] = u
        self.round += 1


# ----------------------------------------------------------------------------------- the tests
def run_both(s: dict, rounds: int = 4, participants=None):
    fedbn = s["fedbn"]
    init = init_arrays(fedbn)
    state = ServerState()
    state.set_init(init)
    cfg = AggregationConfig.from_config(s, seed=0)
    oracle = Oracle(s, init)
    for r in range(rounds):
        who = participants[r] if participants else SCEN
        sent = {k: state.arrays_for(k) for k in who}
        for k in who:  # the oracle sends the same thing
            for n, v in oracle.sent(k).items():
                np.testing.assert_allclose(sent[k][n], v, rtol=1e-5, atol=1e-6, err_msg=f"round {r} {k} {n}")
        uploads = train(sent, r)
        state = aggregate_round(state, uploads, {k: COUNTS[k] for k in who}, cfg)
        oracle.step(uploads, {k: COUNTS[k] for k in who})
        assert state.round == r + 1
    return state, oracle


def assert_matches(state: ServerState, oracle: Oracle, s: dict) -> None:
    for k in SCEN:
        if k not in oracle.alpha:
            continue
        got = state.arrays_for(k)
        for n, v in oracle.sent(k).items():
            np.testing.assert_allclose(got[n], v, rtol=1e-5, atol=1e-6, err_msg=f"{k} {n}")
            assert got[n].dtype == INIT_DTYPES[n], n  # what a client receives has the dtype it sent
        sc = state.scenarios[k]
        np.testing.assert_allclose(sc.alpha.value, oracle.alpha[k], rtol=1e-6, atol=1e-9, err_msg=f"alpha {k}")
        for layer, hp in sc.beta.items():
            np.testing.assert_allclose(hp.value, oracle.beta[k][layer], rtol=1e-6, atol=1e-9,
                                       err_msg=f"beta {k} {layer}")


@pytest.mark.parametrize("over", [
    {},                                                          # the default: CAGrad, learned alpha, attention towers
    {"personalization__per_expert": True},                       # one alpha per scenario expert
    {"conflict__method": "pcgrad"},
    {"conflict__method": "mean", "personalization__mode": "fixed"},  # the no-personalization ablation
    {"conflict__c": 1.5, "towers__learn_beta": False},
    {"towers__mode": "fedavg"},
    {"fedbn": False},                                            # BN uploaded and averaged
], ids=["default", "per-expert", "pcgrad", "mean-fixed", "c1.5-beta-fixed", "towers-fedavg", "no-fedbn"])
def test_four_rounds_match_the_plain_implementation(over):
    s = strategy(**over)
    state, oracle = run_both(s)
    assert_matches(state, oracle, s)


def test_alpha_and_beta_really_move_and_are_reported():
    s = strategy()
    state, oracle = run_both(s, rounds=3)
    for k in SCEN:
        alpha = float(state.scenarios[k].alpha.value)
        assert abs(alpha - 0.1) > 1e-3, (k, alpha)
        assert max(abs(float(b.value) - 0.2) for b in state.scenarios[k].beta.values()) > 5e-4, k
    hp = hyperparams(state)
    assert set(hp) == set(SCEN)
    for k in SCEN:
        assert hp[k]["alpha"] == pytest.approx(float(state.scenarios[k].alpha.value))
        assert hp[k]["beta_mean"] == pytest.approx(np.mean([float(b.value) for b in state.scenarios[k].beta.values()]))


def test_beta_step_sign_and_size_by_hand():
    """One tower tensor, two clients: round 2's step on beta is -lr * <sent - trained, u>, first SGD step."""
    s = strategy(**{"towers__momentum": 0.0, "towers__weight_decay": 0.0, "towers__lr": 0.5})
    n = "towers.0.out.weight"
    st = ServerState()
    st.set_init({n: np.zeros((1, 2), np.float32)})
    cfg = AggregationConfig.from_config(s, seed=0)
    up1 = {"A": {n: np.array([[1.0, 0.0]], np.float32)}, "B": {n: np.array([[0.0, 1.0]], np.float32)}}
    one = aggregate_round(st, up1, {"A": 1, "B": 1}, cfg)
    # u_A = a_AA d_A + a_AB d_B with a = softmax([1, 0] / sqrt 2)
    a = np.exp([1 / math.sqrt(2), 0.0])
    a /= a.sum()
    u_a = a[0] * np.array([1.0, 0.0]) + a[1] * np.array([0.0, 1.0])
    np.testing.assert_allclose(one.scenarios["A"].arrays[n].ravel(), np.array([1.0, 0.0]) + 0.2 * u_a, rtol=1e-6)
    # Round 2: A's training moves further along u_A by 0.1 u_A: g = -0.1 |u_A|^2 < 0, so beta grows.
    sent_a = one.arrays_for("A")[n].astype(np.float64)
    up2 = {"A": {n: (sent_a + 0.1 * u_a).astype(np.float32)}, "B": {n: one.arrays_for("B")[n]}}
    two = aggregate_round(one, up2, {"A": 1, "B": 1}, cfg)
    want = 0.2 + 0.5 * 0.1 * float(u_a @ u_a)
    assert float(two.scenarios["A"].beta["towers.0.out"].value) == pytest.approx(want, rel=1e-5)
    # B did not move: g = 0, beta unchanged.
    assert float(two.scenarios["B"].beta["towers.0.out"].value) == pytest.approx(0.2, abs=1e-12)


def test_alpha_step_sign_and_size_by_hand():
    s = strategy(**{"conflict__method": "mean", "personalization__momentum": 0.0,
                    "personalization__weight_decay": 0.0, "personalization__lr": 0.5})
    n = "experts.scenario.0.layers.0.linear.weight"
    st = ServerState()
    st.set_init({n: np.zeros((2,), np.float32)})
    cfg = AggregationConfig.from_config(s, seed=0)
    one = aggregate_round(st, {"A": {n: np.array([1.0, 0.0], np.float32)}, "B": {n: np.array([0.0, 1.0], np.float32)}},
                          {"A": 1, "B": 1}, cfg)
    d = np.array([0.5, 0.5])
    np.testing.assert_allclose(one.scenarios["A"].arrays[n], [1.0 + 0.1 * 0.5, 0.0 + 0.1 * 0.5], rtol=1e-6)
    sent_a = one.arrays_for("A")[n].astype(np.float64)
    # A's training goes against d: g = <sent - trained, d> = <0.2 d, d> > 0, alpha shrinks by lr * g.
    two = aggregate_round(one, {"A": {n: (sent_a - 0.2 * d).astype(np.float32)}, "B": {n: one.arrays_for("B")[n]}},
                          {"A": 1, "B": 1}, cfg)
    assert float(two.scenarios["A"].alpha.value) == pytest.approx(0.1 - 0.5 * 0.2 * float(d @ d), rel=1e-5)


def test_a_scenario_that_skips_a_round_keeps_its_state_and_steps_on_return():
    s = strategy()
    rounds = [SCEN, ["ES", "NL"], SCEN, SCEN]
    state, oracle = run_both(s, rounds=4, participants=rounds)
    assert_matches(state, oracle, s)


def test_cagrad_in_a_round_is_not_the_mean():
    """The conflict switch reaches the round: CAGrad and the mean give different S tensors."""
    a, _ = run_both(strategy(), rounds=1)
    b, _ = run_both(strategy(conflict__method="mean"), rounds=1)
    n = "experts.scenario.0.layers.0.linear.weight"
    assert not np.allclose(a.arrays_for("ES")[n], b.arrays_for("ES")[n], atol=1e-4)


def test_flat_and_unflat_round_trip_in_name_order():
    arrays = init_arrays(True)
    units = expert_units(list(arrays))
    assert list(units) == ["experts.scenario.0", "experts.scenario.1"]
    assert units["experts.scenario.0"] == ["experts.scenario.0.layers.0.linear.bias",
                                           "experts.scenario.0.layers.0.linear.weight"]
    names = units["experts.scenario.1"]
    v = flat(arrays, names)
    assert v.dtype == np.float64 and v.size == 15
    np.testing.assert_array_equal(v[:3], arrays[names[0]].ravel())
    back = unflat(v * 2, arrays, names)
    for n in names:
        assert back[n].dtype == np.float32 and back[n].shape == arrays[n].shape
        np.testing.assert_allclose(back[n], arrays[n] * 2)
    with_bn = {**arrays, "experts.scenario.0.layers.0.bn.weight": np.ones(3, np.float32)}
    assert "experts.scenario.0.layers.0.bn.weight" not in expert_units(list(with_bn))["experts.scenario.0"]


def test_no_uploads_is_a_no_op_and_empty_state_is_refused():
    st = ServerState()
    cfg = AggregationConfig.from_config(strategy(), seed=0)
    same = aggregate_round(st, {}, {}, cfg)
    assert same.round == 0 and same is not st
    with pytest.raises(RuntimeError, match="no initial tensors"):
        aggregate_round(st, {"A": {"towers.0.out.weight": np.zeros((1, 2), np.float32)}}, {"A": 1}, cfg)


def test_aggregate_round_does_not_touch_its_inputs():
    s = strategy()
    init = init_arrays(True)
    st = ServerState()
    st.set_init(init)
    cfg = AggregationConfig.from_config(s, seed=0)
    one = aggregate_round(st, train({k: st.arrays_for(k) for k in SCEN}, 0), COUNTS, cfg)
    snapshot = {k: {n: v.copy() for n, v in one.arrays_for(k).items()} for k in SCEN}
    alphas = {k: one.scenarios[k].alpha.to_dict() for k in SCEN}
    uploads = train({k: one.arrays_for(k) for k in SCEN}, 1)
    kept = {k: {n: v.copy() for n, v in u.items()} for k, u in uploads.items()}
    aggregate_round(one, uploads, COUNTS, cfg)
    for k in SCEN:
        for n, v in snapshot[k].items():
            np.testing.assert_array_equal(one.arrays_for(k)[n], v)
            np.testing.assert_array_equal(uploads[k][n], kept[k][n])
        assert one.scenarios[k].alpha.to_dict() == alphas[k]
    assert one.round == 1


def test_unflat_places_every_tensor_at_its_offset():
    rng = np.random.default_rng(4)
    arrays = {"a": rng.normal(size=(2, 2)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32),
              "c": rng.normal(size=(1, 2)).astype(np.float32)}
    v = flat(arrays, ["a", "b", "c"])
    back = unflat(v, arrays, ["a", "b", "c"])
    for n in arrays:
        np.testing.assert_array_equal(back[n], arrays[n])


def test_hyperparams_of_rules_without_alpha_or_beta_are_none():
    st = ServerState()
    st.own("A")
    assert hyperparams(st) == {"A": {"alpha": None, "beta_mean": None}}
