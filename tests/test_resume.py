"""A server restart: the run resumed from its checkpoint ends exactly where an uninterrupted one does."""

import pytest

from conftest import inprocess_overrides, run_inprocess
from pfms_server.inprocess import InProcessGrid


class CrashingGrid(InProcessGrid):
    """The server process dies when round 3's training is about to be sent."""

    trains = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            CrashingGrid.trains += 1
            if CrashingGrid.trains == 3:
                raise RuntimeError("server killed")
        return super().send_and_receive(messages, timeout=timeout)


def _rows(strategy):
    return {(r["round"], r["scenario"], r["task"], r["split"]): (r["auc"], r["logloss"]) for r in strategy.rows}


def test_resumed_run_matches_uninterrupted_run(pfms_home, tmp_path):
    base = inprocess_overrides(pfms_home, "num_rounds=4", "eval.splits=[test]")
    nodes = {"state-dir": str(tmp_path / "client-state")}  # clients keep local state on disk
    _, full, full_summary = run_inprocess(base, tmp_path / "full", node_extra=nodes)

    CrashingGrid.trains = 0
    with pytest.raises(RuntimeError, match="server killed"):
        run_inprocess(base, tmp_path / "crashed", CrashingGrid, node_extra=nodes)
    # A new server process and new SuperNode contexts: only the files on disk survive.
    _, resumed, summary = run_inprocess([*base, f"resume={tmp_path / 'crashed'}"], tmp_path / "unused",
                                        node_extra=nodes)
    assert resumed.round_offset == 2 and resumed.state.round == 4
    assert _rows(resumed) == _rows(full)  # every round, metric for metric
    assert summary["test_mean_auc"] == full_summary["test_mean_auc"]
    for name in full.state.scenarios:
        assert resumed.state.scenarios[name].alpha.to_dict() == full.state.scenarios[name].alpha.to_dict()


def test_resume_without_checkpoint_is_a_clear_error(pfms_home, tmp_path):
    with pytest.raises(ValueError, match="no server checkpoint"):
        run_inprocess(inprocess_overrides(pfms_home, f"resume={tmp_path / 'nothing'}"), tmp_path / "x")
