"""A server restart: the run resumed from its checkpoint ends exactly where an uninterrupted one does,
wherever in a round the server died."""

import pytest

from conftest import inprocess_overrides, run_inprocess
from pfms_server.experiments.inprocess import InProcessGrid
from pfms_server.strategy import ScenarioStrategy



class CrashingGrid(InProcessGrid):
    """The server process dies at a chosen point of round 3 (train) or round 2 (evaluate)."""

    when = ""
    sent = {"train": 0, "evaluate": 0}

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else ""
        if kind in self.sent:
            self.sent[kind] += 1
        if self.when == "before-train-3" and kind == "train" and self.sent["train"] == 3:
            raise RuntimeError("server killed")
        replies = super().send_and_receive(messages, timeout=timeout)
        # The clients trained round 3 and saved their state; the replies never arrive.
        if self.when == "after-train-3" and kind == "train" and self.sent["train"] == 3:
            raise RuntimeError("server killed")
        # Round 2 is aggregated and checkpointed; its evaluation replies are lost.
        if self.when == "during-eval-2" and kind == "evaluate" and self.sent["evaluate"] == 2:
            raise RuntimeError("server killed")
        # One message per round: all four rounds are aggregated; the final evaluation is lost.
        if self.when == "during-final-eval" and kind == "evaluate" and self.sent["evaluate"] == 1:
            raise RuntimeError("server killed")
        return replies


def _rows(strategy):
    return {(r["round"], r["scenario"], r["task"], r["split"]): (r["auc"], r["logloss"]) for r in strategy.rows}


@pytest.fixture(scope="module")
def uninterrupted(pfms_home, tmp_path_factory):
    # Two scenarios: a crash and a resume concern the server and each node alike.
    base = inprocess_overrides(pfms_home, "num_rounds=4", "eval.splits=[test]", "dataset.scenarios=[NL,ES]")
    root = tmp_path_factory.mktemp("full")
    _, full, summary = run_inprocess(base, root / "full", node_extra={"state-dir": str(root / "client-state")})
    return base, full, summary


@pytest.mark.parametrize("when, merged, done", [
    ("before-train-3", True, 2), ("after-train-3", True, 2),
    ("during-eval-2", False, 2),  # a separate evaluate message per round (partial participation's schedule)
    ("during-final-eval", True, 4),
])
def test_resumed_run_matches_uninterrupted_run(uninterrupted, tmp_path, monkeypatch, when, merged, done):
    base, full, full_summary = uninterrupted
    monkeypatch.setattr(ScenarioStrategy, "EVAL_WITH_TRAIN", merged)
    nodes = {"state-dir": str(tmp_path / "client-state")}  # clients keep local state on disk
    CrashingGrid.when, CrashingGrid.sent = when, {"train": 0, "evaluate": 0}
    with pytest.raises(RuntimeError, match="server killed"):
        run_inprocess(base, tmp_path / "crashed", CrashingGrid, node_extra=nodes)
    # A new server process and new SuperNode contexts: only the files on disk survive.
    _, resumed, summary = run_inprocess([*base, f"resume={tmp_path / 'crashed'}"], tmp_path / "unused",
                                        node_extra=nodes)
    assert resumed.round_offset == done and resumed.state.round == 4
    assert _rows(resumed) == _rows(full)  # every round, metric for metric
    assert summary["test_mean_auc"] == full_summary["test_mean_auc"]
    # The rounds aggregated before the crash count too (the train log is written every round).
    assert summary["status"] == full_summary["status"] == "completed"
    assert summary["aggregated_rounds"] == full_summary["aggregated_rounds"] == [1, 2, 3, 4]
    key = lambda r: (r["round"], r["scenario"], r["num_examples"])  # noqa: E731
    assert sorted(map(key, resumed.train_log)) == sorted(map(key, full.train_log))
    for name in full.state.scenarios:
        assert resumed.state.scenarios[name].alpha.to_dict() == full.state.scenarios[name].alpha.to_dict()


def test_resume_without_checkpoint_is_a_clear_error(pfms_home, tmp_path):
    with pytest.raises(ValueError, match="no server checkpoint"):
        run_inprocess(inprocess_overrides(pfms_home, f"resume={tmp_path / 'nothing'}"), tmp_path / "x")
