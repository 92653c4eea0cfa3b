"""Every kind of bad train reply is dropped, and the server state is exactly what it
would have been had that node not replied at all.

Fast: no torch, no ClientApp. The Strategy is built directly with the real rule from
the default config, over a hand-made initialisation that follows the naming contract
(pfms_client/template.py); its query messages are answered by a tiny fake client on
the product's InProcessGrid, and the train replies are crafted here. Each case runs
the same rounds twice: once with node ES's bad reply, once with ES silent, and the
two server states must agree bit for bit.
"""

from __future__ import annotations

import copy
import logging

from conftest import forge

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from pfms_client.config import load_config
from pfms_client.wire import KEY, pack, unpack
from pfms_server.experiments.inprocess import InProcessGrid
from pfms_server.aggregation.rules import make_rule
from pfms_server.aggregation.state import ServerState
from pfms_server.strategy import ScenarioStrategy

SCENARIOS = ["NL", "ES", "FR", "US"]
NUM_EXAMPLES = {"NL": 300, "ES": 500, "FR": 200, "US": 400}
BAD = "ES"
T = "experts.scenario.0.layers.0.linear.weight"  # the tensor the tensor-level cases spoil
SHAPES = {
    "experts.global.0.layers.0.linear.weight": (3, 4),
    "experts.global.0.layers.0.linear.bias": (3,),
    T: (3, 4),
    "experts.scenario.0.layers.0.linear.bias": (3,),
    "experts.scenario.1.layers.0.linear.weight": (3, 4),
    "towers.0.out.weight": (1, 3),
    "towers.0.out.bias": (1,),
    "towers.1.out.weight": (1, 3),
    "towers.1.out.bias": (1,),
}


def init_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}


@pytest.fixture(scope="module")
def strategy_cfg():
    return load_config([]).strategy  # PF-MSMTrec as configured: CAGrad, learned alpha, attention towers


def answer_query(msg: Message, context) -> Message:
    """The only thing the fake client does: say which scenario it serves."""
    assert msg.metadata.message_type == "query"
    return Message(RecordDict({"meta": ConfigRecord({"scenario": context.node_config["scenario"]})}), reply_to=msg)


@pytest.fixture
def grid(task_identity):
    return InProcessGrid(answer_query, [{"scenario": s} for s in SCENARIOS])


def make_strategy(strategy_cfg, min_train_nodes: int = 2) -> ScenarioStrategy:
    state = ServerState()
    state.set_init(init_arrays())
    return ScenarioStrategy(make_rule(strategy_cfg, seed=42), SCENARIOS, seed=42, num_rounds=5,
                     min_train_nodes=min_train_nodes, round_timeout=5.0, state=state)


def send(strategy: ScenarioStrategy, grid: InProcessGrid, server_round: int) -> dict[str, Message]:
    """configure_train, as Flower's loop calls it; the train messages by scenario."""
    msgs = list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid))
    return {strategy.node_scenario[m.metadata.dst_node_id]: m for m in msgs}


def trained(msg: Message, server_round: int, scenario: str) -> dict[str, np.ndarray]:
    """What a client 'trained': the tensors it was sent plus a seeded step."""
    rng = np.random.default_rng(1000 * server_round + SCENARIOS.index(scenario))
    return {k: (v + 0.05 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in unpack(msg.content["arrays"]).items()}


def good_parts(msg: Message, server_round: int, scenario: str) -> dict:
    return {"arrays": trained(msg, server_round, scenario),
            "metrics": {"num-examples": NUM_EXAMPLES[scenario], "train_bce": 0.3},
            "meta": {"scenario": scenario}}


def build(parts: dict) -> RecordDict:
    content = RecordDict()
    if "arrays" in parts:
        content["arrays"] = pack(parts["arrays"])
    if "metrics" in parts:
        content["metrics"] = MetricRecord(parts["metrics"])
    if "meta" in parts:
        content["meta"] = ConfigRecord(parts["meta"])
    return content


def replies(sent: dict[str, Message], server_round: int, skip=(), bad=None) -> list[Message]:
    """Good replies of every scenario but ``skip``; ``bad`` spoils BAD's reply."""
    out = []
    for scenario, msg in sent.items():
        if scenario in skip:
            continue
        if scenario == BAD and bad is not None:
            out.append(bad(msg, good_parts(msg, server_round, scenario)))
        else:
            out.append(Message(build(good_parts(msg, server_round, scenario)), reply_to=msg))
    return out


# -- state comparison -------------------------------------------------------------------
def assert_same_arrays(a: dict, b: dict, where: str) -> None:
    assert sorted(a) == sorted(b), where
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{where}/{k}"
        assert a[k].tobytes() == b[k].tobytes(), f"{where}/{k} differs"


def assert_same_hp(a, b, where: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, where
        return
    assert a.value.tobytes() == b.value.tobytes(), f"{where}: {a.value} != {b.value}"
    assert (a.momentum is None) == (b.momentum is None), where
    if a.momentum is not None:
        assert a.momentum.tobytes() == b.momentum.tobytes(), where


def assert_same_state(a: ServerState, b: ServerState) -> None:
    assert a.round == b.round
    assert_same_arrays(a.init, b.init, "init")
    assert_same_arrays(a.global_arrays, b.global_arrays, "global")
    assert sorted(a.scenarios) == sorted(b.scenarios)
    for name, sa in a.scenarios.items():
        sb = b.scenarios[name]
        assert_same_arrays(sa.arrays, sb.arrays, f"{name}.arrays")
        assert_same_arrays(sa.alpha_dir, sb.alpha_dir, f"{name}.alpha_dir")
        assert_same_arrays(sa.beta_dir, sb.beta_dir, f"{name}.beta_dir")
        assert_same_hp(sa.alpha, sb.alpha, f"{name}.alpha")
        assert sorted(sa.beta) == sorted(sb.beta), name
        for layer in sa.beta:
            assert_same_hp(sa.beta[layer], sb.beta[layer], f"{name}.beta[{layer}]")
        assert sa.num_examples == sb.num_examples, name


# -- the bad replies --------------------------------------------------------------------
def spoil(change):
    """A reply built from the good parts after ``change(parts)``."""
    def make(msg, parts):
        change(parts)
        return Message(build(parts), reply_to=msg)
    return make


def _set(key, value):
    def change(parts):
        parts["arrays"][key] = value(parts["arrays"][key]) if callable(value) else value
    return change


def _with_value(v):
    def change(parts):
        parts["arrays"][T] = parts["arrays"][T].copy()
        parts["arrays"][T].flat[5] = v
    return change


def _rename(parts):
    parts["arrays"][T + "_renamed"] = parts["arrays"].pop(T)


def _extra(parts):
    parts["arrays"]["experts.scenario.9.layers.0.linear.weight"] = parts["arrays"][T].copy()


def _count(value):
    def change(parts):
        parts["metrics"]["num-examples"] = value
    return change


def _metrics_as_config(value):
    """A reply whose 'metrics' is a ConfigRecord: a MetricRecord cannot hold a string."""
    def make(msg, parts):
        content = build({k: v for k, v in parts.items() if k != "metrics"})
        content["metrics"] = ConfigRecord({**parts["metrics"], "num-examples": value})
        return Message(content, reply_to=msg)
    return make


def _without(key):
    def change(parts):
        del parts[key]
    return change


def _undecodable(msg, parts):
    """Packed bytes that are no .npy at all (the wire carries whatever a client sends)."""
    content = build(parts)
    good = content["arrays"][KEY]
    content["arrays"][KEY] = Array(dtype=good.dtype, shape=tuple(good.shape), stype=good.stype, data=b"not an npy file")
    return Message(content, reply_to=msg)


def _forged_offset(msg, parts):
    """A packed buffer whose header puts a tensor past the buffer's end."""
    content = build(parts)

    def far(header):
        next(e for e in header["tensors"] if e["name"] == T)["offset"] = 10**9
    content["arrays"] = forge(content["arrays"], far)
    return Message(content, reply_to=msg)


def _unpacked(msg, parts):
    """Tensors as separate Arrays (not pfms's packed format)."""
    content = build({k: v for k, v in parts.items() if k != "arrays"})
    content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in parts["arrays"].items()})
    return Message(content, reply_to=msg)


def _arrays_as_config(msg, parts):
    content = build({k: v for k, v in parts.items() if k != "arrays"})
    content["arrays"] = ConfigRecord({"x": 1})
    return Message(content, reply_to=msg)


def _error(msg, parts):
    return Message(Error(code=0, reason="ClientAppException: out of memory"), reply_to=msg)


# (id, make the bad reply, words the WARNING line must contain besides node and scenario)
CASES = [
    ("unexpected-tensor", spoil(_extra), ["unexpected tensor experts.scenario.9.layers.0.linear.weight"]),
    ("renamed-tensor", spoil(_rename), [f"missing tensor {T}", f"unexpected tensor {T}_renamed"]),
    ("missing-tensor", spoil(lambda p: p["arrays"].pop(T)), [f"missing tensor {T}"]),
    ("wrong-shape", spoil(_set(T, lambda a: a[:, :2].copy())), [f"tensor {T}: shape (3, 2), expected (3, 4)"]),
    ("wrong-dtype", spoil(_set(T, lambda a: a.astype(np.float64))), [f"tensor {T}: dtype float64, expected float32"]),
    ("nan", spoil(_with_value(np.nan)), [f"tensor {T}: contains NaN or Inf"]),
    ("plus-inf", spoil(_with_value(np.inf)), [f"tensor {T}: contains NaN or Inf"]),
    ("minus-inf", spoil(_with_value(-np.inf)), [f"tensor {T}: contains NaN or Inf"]),
    ("count-missing", spoil(lambda p: p["metrics"].pop("num-examples")), ["num-examples None is not a number"]),
    ("count-zero", spoil(_count(0)), ["num-examples 0 is not a positive number"]),
    ("count-negative", spoil(_count(-500)), ["num-examples -500 is not a positive number"]),
    ("count-nan", spoil(_count(float("nan"))), ["num-examples nan is not a positive number"]),
    ("count-inf", spoil(_count(float("inf"))), ["num-examples inf is not a positive number"]),
    ("count-list", spoil(_count([500, 1])), ["num-examples [500, 1] is not a number"]),
    ("count-string", _metrics_as_config("many"), ["num-examples 'many' is not a number"]),
    ("count-below-one", spoil(_count(0.5)), ["num-examples 0.5 is less than one sample"]),
    ("count-below-one-string", _metrics_as_config("0.5"), ["num-examples '0.5' is less than one sample"]),
    ("no-arrays", spoil(_without("arrays")), ["reply lacks arrays or metrics"]),
    ("no-metrics", spoil(_without("metrics")), ["reply lacks arrays or metrics"]),
    ("arrays-not-an-array-record", _arrays_as_config, ["'arrays' is a ConfigRecord, not an ArrayRecord"]),
    ("undecodable-packed-array", _undecodable, ["packed array cannot be decoded"]),
    ("forged-offset", _forged_offset, [f"tensor {T}: bytes 1000", "lie outside the packed array"]),
    ("tensors-not-packed", _unpacked, ["expected one packed array 'packed'"]),
    ("claims-another-scenario", spoil(lambda p: p["meta"].update(scenario="FR")),
     ["it says scenario 'FR', the node serves 'ES'"]),
    ("no-meta", spoil(_without("meta")), ["it says scenario '', the node serves 'ES'"]),
]


@pytest.mark.parametrize("make_bad,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_reply_is_dropped_and_state_is_as_if_the_node_had_not_replied(
        strategy_cfg, grid, caplog, make_bad, words):
    with_bad, without = make_strategy(strategy_cfg), make_strategy(strategy_cfg)
    for s in (with_bad, without):  # round 1: everybody good, so ES has alpha, beta and its own tensors
        sent = send(s, grid, 1)
        s.aggregate_train(1, replies(sent, 1))
    assert_same_state(with_bad.state, without.state)
    before = copy.deepcopy(with_bad.state)

    sent_a, sent_b = send(with_bad, grid, 2), send(without, grid, 2)
    node = next(n for n, s in with_bad.node_scenario.items() if s == BAD)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        out = with_bad.aggregate_train(2, replies(sent_a, 2, bad=make_bad))
    without.aggregate_train(2, replies(sent_b, 2, skip=(BAD,)))
    assert out[0] is not None and out[1]["clients"] == 3  # the other three still aggregated

    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    drop = [ln for ln in lines if "dropping" in ln and f"node {node}" in ln]
    assert len(drop) == 1, lines
    assert "round 2" in drop[0] and BAD in drop[0], drop[0]
    for w in words:
        assert w in drop[0], drop[0]

    assert_same_state(with_bad.state, without.state)
    assert with_bad.state.round == 2
    # ES's own state is what round 1 left it, other than what every scenario shares.
    assert_same_arrays(with_bad.state.scenarios[BAD].arrays, before.scenarios[BAD].arrays, "ES own")
    assert_same_hp(with_bad.state.scenarios[BAD].alpha, before.scenarios[BAD].alpha, "ES alpha")
    assert not np.array_equal(with_bad.state.scenarios["NL"].arrays[T], before.scenarios["NL"].arrays[T])
    # ... and round 3 goes on identically: ES is sent the same tensors by both servers.
    sent_a, sent_b = send(with_bad, grid, 3), send(without, grid, 3)
    for scenario in SCENARIOS:
        a = unpack(sent_a[scenario].content["arrays"])
        b = unpack(sent_b[scenario].content["arrays"])
        assert_same_arrays(a, b, f"round 3 to {scenario}")
    with_bad.aggregate_train(3, replies(sent_a, 3))
    without.aggregate_train(3, replies(sent_b, 3))
    assert_same_state(with_bad.state, without.state)


def test_an_error_reply_is_dropped_and_named(strategy_cfg, grid, caplog):
    with_bad, without = make_strategy(strategy_cfg), make_strategy(strategy_cfg)
    sent_a, sent_b = send(with_bad, grid, 1), send(without, grid, 1)
    node = next(n for n, s in with_bad.node_scenario.items() if s == BAD)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        with_bad.aggregate_train(1, replies(sent_a, 1, bad=_error))
    without.aggregate_train(1, replies(sent_b, 1, skip=(BAD,)))
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"training failed on node {node} (ES): ClientAppException: out of memory" in ln for ln in lines), lines
    assert BAD not in with_bad.state.scenarios
    assert_same_state(with_bad.state, without.state)


def test_a_reply_from_a_node_that_was_not_sent_work_is_dropped(strategy_cfg, grid, caplog):
    with_bad, without = make_strategy(strategy_cfg), make_strategy(strategy_cfg)
    sent_a, sent_b = send(with_bad, grid, 1), send(without, grid, 1)
    # A node that was sent nothing this round (e.g. it joined after configure_train)
    # replies as if it served ES.
    elsewhere = Message(RecordDict(), message_type="train", dst_node_id=4242)
    stranger = Message(build(good_parts(sent_a[BAD], 1, BAD)), reply_to=elsewhere)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        with_bad.aggregate_train(1, [*replies(sent_a, 1, skip=(BAD,)), stranger])
    without.aggregate_train(1, replies(sent_b, 1, skip=(BAD,)))
    assert any("node 4242 that was not sent work" in r.getMessage() for r in caplog.records)
    assert_same_state(with_bad.state, without.state)


def _two_bad(msg, parts):
    parts["arrays"][T] = parts["arrays"][T].astype(np.float64)
    return Message(build(parts), reply_to=msg)


@pytest.mark.parametrize("n_bad,aggregates", [(2, False), (1, True)])
def test_too_few_valid_replies_leave_the_state_unchanged_but_the_round(strategy_cfg, grid, caplog, n_bad, aggregates):
    """min_train_nodes=3 of 4: two bad replies leave two valid ones and nothing is
    aggregated (only the round counter moves); one bad reply leaves three and the round
    aggregates as usual."""
    strategy = make_strategy(strategy_cfg, min_train_nodes=3)
    sent = send(strategy, grid, 1)
    strategy.aggregate_train(1, replies(sent, 1))
    before = copy.deepcopy(strategy.state)

    sent = send(strategy, grid, 2)
    msgs = replies(sent, 2)
    bad_scenarios = ["ES", "FR"][:n_bad]
    for i, m in enumerate(msgs):
        scenario = strategy.node_scenario[m.metadata.src_node_id]
        if scenario in bad_scenarios:
            msgs[i] = _two_bad(sent[scenario], good_parts(sent[scenario], 2, scenario))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        out = strategy.aggregate_train(2, msgs)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("dropping reply" in ln for ln in lines) == n_bad
    if aggregates:
        assert out[0] is not None and out[1]["clients"] == 3
        assert strategy.state.round == 2
        assert not np.array_equal(strategy.state.global_arrays["experts.global.0.layers.0.linear.weight"],
                                   before.global_arrays["experts.global.0.layers.0.linear.weight"])
        return
    assert out == (None, None)
    assert any(ln.startswith("round 2 NOT aggregated: 2 valid of 4 replies (4 sent) < min_train_nodes=3 (ES: invalid "
                              "reply: ") and ln.endswith("; state unchanged") for ln in lines), lines
    assert [(r["round"], r["aggregated"], r["replies_valid"], r["replies_received"], sorted(r["problems"]))
            for r in strategy.round_results] == [(1, True, 4, 4, []), (2, False, 2, 4, bad_scenarios)]
    assert strategy.state.round == 2
    before.round = 2
    assert_same_state(strategy.state, before)
    # Round 3 sends every scenario what round 1 left it.
    sent3 = send(strategy, grid, 3)
    for scenario in SCENARIOS:
        assert_same_arrays(unpack(sent3[scenario].content["arrays"]),
                           before.arrays_for(scenario), f"round 3 to {scenario}")


def _replies_with_metrics(sent: dict[str, Message], server_round: int, metrics: dict[str, dict]) -> list[Message]:
    out = []
    for scenario, msg in sent.items():
        parts = good_parts(msg, server_round, scenario)
        parts["metrics"] = metrics[scenario]
        out.append(Message(build(parts), reply_to=msg))
    return out


def test_unusable_optional_metrics_neither_drop_the_reply_nor_stop_the_round(strategy_cfg, grid):
    """train_bce and samples_per_s are informative: a list, NaN or nothing there must not
    crash the mean loss (the state was already aggregated by then) nor drop the tensors."""
    strategy = make_strategy(strategy_cfg)
    sent = send(strategy, grid, 1)
    _, out = strategy.aggregate_train(1, _replies_with_metrics(sent, 1, {
        "NL": {"num-examples": 300, "train_bce": 0.2, "samples_per_s": 1000.0},
        "ES": {"num-examples": 500, "train_bce": [0.1, 0.2]},
        "FR": {"num-examples": 200, "train_bce": float("nan")},
        "US": {"num-examples": 400, "samples_per_s": [1.0, 2.0]},
    }))
    assert out["clients"] == 4 and out["train_bce"] == pytest.approx(0.2)  # only NL reported a usable loss
    assert {r["scenario"]: r["train_bce"] for r in strategy.train_log} == {"NL": 0.2, "ES": None, "FR": None,
                                                                         "US": None}
    assert {r["scenario"]: r["num_examples"] for r in strategy.train_log} == NUM_EXAMPLES
    assert strategy.state.round == 1 and sorted(strategy.state.scenarios) == sorted(SCENARIOS)


def test_the_mean_loss_is_sample_weighted_and_survives_huge_counts(strategy_cfg, grid):
    strategy = make_strategy(strategy_cfg)
    bce = {"NL": 0.1, "ES": 0.2, "FR": 0.3, "US": 0.4}
    sent = send(strategy, grid, 1)
    _, out = strategy.aggregate_train(1, _replies_with_metrics(
        sent, 1, {s: {"num-examples": NUM_EXAMPLES[s], "train_bce": bce[s]} for s in SCENARIOS}))
    total = sum(NUM_EXAMPLES.values())
    assert out["train_bce"] == pytest.approx(sum(bce[s] * NUM_EXAMPLES[s] for s in SCENARIOS) / total)
    # Counts are only checked to be finite and positive: 1e308 each must not overflow the mean.
    sent = send(strategy, grid, 2)
    _, out = strategy.aggregate_train(2, _replies_with_metrics(
        sent, 2, {s: {"num-examples": 1e308, "train_bce": bce[s]} for s in SCENARIOS}))
    assert out["train_bce"] == pytest.approx(0.25)
    assert strategy.state.round == 2
