"""The Strategy's orchestration: bad replies are dropped, scenarios survive node restarts."""

import logging
import time

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Message, MessageType, RecordDict

from conftest import inprocess_overrides, run_inprocess
from pfms_client.client_app import Session
from pfms_client.wire import pack, unpack
from pfms_server.experiments.inprocess import InProcessGrid
from pfms_server.polling_grid import PollingGrid
from pfms_server.strategy import ScenarioStrategy


class TamperingGrid(InProcessGrid):
    """Corrupts ES's train reply in round 2 (NaN in one tensor)."""

    round = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if messages and messages[0].metadata.message_type == "train":
            TamperingGrid.round += 1
            if TamperingGrid.round == 2:
                for r in replies:
                    if r.content["meta"]["scenario"] == "ES":
                        arrays = unpack(r.content["arrays"])
                        name = sorted(arrays)[0]
                        arrays[name].flat[0] = np.nan
                        r.content["arrays"] = pack(arrays)
                        self.bad_tensor = name
        return replies


def test_nan_reply_is_dropped_and_state_is_unchanged(pfms_home, tmp_path, caplog):
    TamperingGrid.round = 0
    snapshots = {}

    class Snap(TamperingGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                snapshots[TamperingGrid.round + 1] = {
                    m.metadata.dst_node_id: unpack(m.content["arrays"])
                    for m in messages}
            return super().send_and_receive(messages, timeout=timeout)

    with caplog.at_level(logging.WARNING, logger="flwr"):
        grid, strategy, _ = run_inprocess(
            inprocess_overrides(pfms_home, "num_rounds=3", "eval.splits=[val]", "dataset.scenarios=[NL,ES]",
                                "strategy.participation.min_train_nodes=1"), tmp_path / "r", Snap)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("dropping reply" in m and "(ES)" in m and grid.bad_tensor in m and "NaN" in m for m in msgs), msgs
    es_node = next(n for n, s in strategy.node_scenario.items() if s == "ES")
    # What ES was sent in round 3 equals what it was sent in round 2, except the shared G copy.
    r2, r3 = snapshots[2][es_node], snapshots[3][es_node]
    for name in r2:
        if not name.startswith("experts.global"):
            np.testing.assert_array_equal(r2[name], r3[name], err_msg=name)
    nl_node = next(n for n, s in strategy.node_scenario.items() if s == "NL")
    assert any(not np.array_equal(snapshots[2][nl_node][n], snapshots[3][nl_node][n]) for n in r2)


class RestartGrid(InProcessGrid):
    """After round 1's training, the FR node goes away and comes back under a new node id."""

    calls = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if messages and messages[0].metadata.message_type == "train":
            RestartGrid.calls += 1
            if RestartGrid.calls == 1:
                old = next(n for n, c in self.contexts.items() if c.node_config["partition-id"] == 2)
                ctx = self.contexts.pop(old)
                self.add_node(5555, dict(ctx.node_config))
                self.contexts[5555].state = ctx.state  # the SuperNode kept its state (e.g. state-dir)
        return replies


def test_node_restart_keeps_scenario_state(pfms_home, tmp_path, monkeypatch):
    RestartGrid.calls = 0
    after = {}  # round -> every scenario's tensors as the server holds them after aggregating it
    aggregate_train = ScenarioStrategy.aggregate_train

    def spy(self, server_round, replies):
        out = aggregate_train(self, server_round, replies)
        after[self.state.round] = {s: {k: v.copy() for k, v in self.state.arrays_for(s).items()}
                                   for s in self.scenarios}
        return out

    monkeypatch.setattr(ScenarioStrategy, "aggregate_train", spy)
    train_sent = []  # per round: node -> the tensors it was sent

    class Recording(RestartGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                train_sent.append({m.metadata.dst_node_id: unpack(m.content["arrays"])
                                   for m in messages})
            return super().send_and_receive(messages, timeout=timeout)

    grid, strategy, summary = run_inprocess(
        inprocess_overrides(pfms_home, "num_rounds=2", "eval.splits=[val]"), tmp_path / "r", Recording)
    assert strategy.node_scenario.get(5555) == "FR"
    assert sorted(strategy.node_scenario.values()) == ["ES", "FR", "NL", "US"]
    assert {r["scenario"] for r in summary["final"]} == {"ES", "FR", "NL", "US"}
    assert strategy.state.round == 2

    # (a) The node back under its new id is sent FR's personalized tensors of round 1.
    assert 5555 not in train_sent[0] and 5555 in train_sent[1]
    got, want = train_sent[1][5555], after[1]["FR"]
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    nl = next(n for n, s in strategy.node_scenario.items() if s == "NL")
    scenario_experts = [n for n in want if n.startswith("experts.scenario")]
    assert any(not np.array_equal(want[n], train_sent[1][nl][n]) for n in scenario_experts)  # FR's, not NL's
    old_fr = next(n for n in train_sent[0] if n not in train_sent[1])
    assert any(not np.array_equal(want[n], train_sent[0][old_fr][n]) for n in scenario_experts)  # moved in round 1

    # (b) Its local state (task experts, embeddings, BN) went on from round 1: two rounds trained.
    for node in (5555, nl):
        session = Session(grid.contexts[node])
        session.restore()
        assert (session.scenario, session.local.rounds_trained) == (strategy.node_scenario[node], 2)


def test_partial_participation_trains_a_sample_and_evaluates_everybody(pfms_home, tmp_path):
    _, strategy, summary = run_inprocess(
        inprocess_overrides(pfms_home, "num_rounds=2", "eval.splits=[val]",
                            "strategy.participation.fraction_train=0.5", "strategy.participation.min_train_nodes=2"),
        tmp_path / "r")
    per_round = {}
    for r in strategy.train_log:
        per_round.setdefault(r["round"], set()).add(r["scenario"])
    assert [len(per_round[k]) for k in (1, 2)] == [2, 2]
    assert {r["scenario"] for r in summary["final"]} == {"NL", "ES", "FR", "US"}


class CountingGrid(InProcessGrid):
    """Counts the messages of each type the server sends, per call of send_and_receive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, int]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages:
            self.sent.append((messages[0].metadata.message_type, len(messages)))
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize("extra", [
    ("strategy=pfmsmtrec", "eval.splits=[val,test]"),
    ("strategy=ditto", "eval.splits=[val]"),  # Ditto evaluates its personal model
    ("strategy=fedavg", "eval.every=2", "eval.splits=[train,test]"),
])
def test_one_message_per_round_gives_the_metrics_of_separate_evaluate_messages(pfms_home, tmp_path, monkeypatch,
                                                                               extra):
    """Each train message also evaluates the model it brings (the previous round's); one final
    evaluate message ends the run. The metrics, the summary and the trained state equal those of
    the schedule with a separate evaluate message per round, number for number."""
    # Two scenarios: the schedule is per node, and each further node only adds seconds.
    overrides = inprocess_overrides(pfms_home, "num_rounds=3", "train.num_threads=1", "dataset.scenarios=[NL,ES]",
                                    *extra)
    runs = {}
    for merged in (False, True):
        monkeypatch.setattr(ScenarioStrategy, "EVAL_WITH_TRAIN", merged)
        runs[merged] = run_inprocess(overrides, tmp_path / f"merged-{merged}", CountingGrid)
    (g_sep, s_sep, sum_sep), (g_one, s_one, sum_one) = runs[False], runs[True]
    every2 = "eval.every=2" in extra
    assert g_one.sent == [("query", 2), ("train", 2), ("train", 2), ("train", 2), ("evaluate", 2)]
    evals = [("evaluate", 2)] if not every2 else []
    assert g_sep.sent == [("query", 2), ("train", 2), *evals, ("train", 2), ("evaluate", 2), ("train", 2),
                          ("evaluate", 2)]
    key = lambda r: (r["round"], r["scenario"], r["split"], r["task"])  # noqa: E731
    assert sorted(s_one.rows, key=key) == sorted(s_sep.rows, key=key)
    assert {r["round"] for r in s_one.rows} == ({2, 3} if every2 else {1, 2, 3})
    for k in ("final", "val_mean_auc", "test_mean_auc", "best_val_round", "hyperparams"):
        assert sum_one.get(k) == sum_sep.get(k), k
    for scenario in s_sep.scenarios:
        one, sep = s_one.state.arrays_for(scenario), s_sep.state.arrays_for(scenario)
        for name in sep:
            np.testing.assert_array_equal(one[name], sep[name], err_msg=name)
    assert (tmp_path / "merged-True" / "metrics.csv").read_text().count("\n") == len(s_one.rows) + 1


def test_sampled_training_keeps_an_evaluate_message_per_round(pfms_home, tmp_path):
    """With fraction_train < 1 the nodes that do not train must still evaluate: no merging."""
    grid, _, _ = run_inprocess(
        inprocess_overrides(pfms_home, "num_rounds=2", "eval.splits=[val]", "strategy.participation.fraction_train=0.5",
                            "strategy.participation.min_train_nodes=2"), tmp_path / "r", CountingGrid)
    assert [(t, n) for t, n in grid.sent if t != "query"] == [("train", 2), ("evaluate", 4), ("train", 2),
                                                              ("evaluate", 4)]


class FakeLinkGrid(InProcessGrid):
    """push/pull like a deployed Grid: each reply becomes visible only after ``delay`` pulls."""

    def __init__(self, delay: int):
        super().__init__(lambda m, c: Message(RecordDict({"config": ConfigRecord({"ok": 1})}), reply_to=m), [{}, {}])
        self.delay, self.pulls, self.out = delay, 0, {}

    def push_messages(self, messages):
        ids = []
        for i, m in enumerate(messages):
            ids.append(f"m{i}")
            self.out[f"m{i}"] = Message(RecordDict(), reply_to=m)
            self.out[f"m{i}"].metadata.__dict__["_reply_to_message_id"] = f"m{i}"
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [self.out.pop(i) for i in list(message_ids) if i in self.out] if self.pulls > self.delay else []


def _messages(n):
    return [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=1001 + i) for i in range(n)]


def test_polling_grid_pulls_every_interval_until_all_replies_are_in():
    inner = FakeLinkGrid(delay=3)
    t0 = time.perf_counter()
    replies = list(PollingGrid(inner, 0.05).send_and_receive(_messages(2), timeout=10))
    waited = time.perf_counter() - t0
    assert len(replies) == 2 and inner.pulls == 4  # three empty pulls, then both replies
    assert 0.15 <= waited < 1.5  # three waits of 0.05 s, not Flower's 3 s each


def test_polling_grid_stops_at_the_timeout_and_falls_back_without_push():
    inner = FakeLinkGrid(delay=10**6)
    t0 = time.perf_counter()
    assert list(PollingGrid(inner, 0.05).send_and_receive(_messages(1), timeout=0.3)) == []
    assert 0.3 <= time.perf_counter() - t0 < 2
    plain = InProcessGrid(lambda m, c: Message(RecordDict(), reply_to=m), [{}, {}])  # no push/pull: its own loop
    assert len(list(PollingGrid(plain, 0.05).send_and_receive(_messages(2), timeout=1))) == 2
    with pytest.raises(ValueError, match="poll_interval"):
        PollingGrid(plain, 0)
