"""Baselines are strategy configs on the same Strategy, ClientApp and MMoE backbone."""

import math

import numpy as np
import pytest
import torch

from conftest import inprocess_overrides, run_inprocess
from pfms_client.template import classify
from pfms_client.wire import unpack
from pfms_server.aggregation.fedamp import attention_weights
from pfms_server.experiments.inprocess import InProcessGrid

# Two scenarios (what each baseline shares, keeps or weighs shows with two nodes) on the
# in-process tests' small data set.
SCENARIOS = ("NL", "ES")
TINY = ["dataset.scenarios=[NL,ES]", "num_rounds=2", "eval.splits=[test]", "eval.every=2"]
BASELINES = ["fedavg", "fedprox", "fedbn", "fedper", "fedrep", "ditto", "fedamp", "local"]


class RecordingGrid(InProcessGrid):
    """Keeps every tensor that crossed the wire: what each node was sent and sent back, per round."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.down, self.up = [], []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        for r in replies:
            assert not r.has_error(), r.error.reason
        if messages and messages[0].metadata.message_type == "train":
            self.down.append({m.metadata.dst_node_id: unpack(m.content["arrays"])
                              for m in messages})
            self.up.append({r.metadata.src_node_id: unpack(r.content["arrays"])
                            for r in replies})
        return replies


@pytest.fixture(scope="module")
def runs(pfms_home, tmp_path_factory):
    """One 2-round run per baseline, made on first use and shared by the tests below."""
    done = {}
    root = tmp_path_factory.mktemp("baselines")

    def get(strategy):
        if strategy not in done:
            done[strategy] = run_inprocess(
                inprocess_overrides(pfms_home, *TINY, f"strategy={strategy}"), root / strategy, RecordingGrid,
                node_extra={"state-dir": str(root / "state")})
        return done[strategy]

    get.root = root
    return get


@pytest.mark.parametrize("strategy", BASELINES)
def test_each_baseline_runs_two_rounds(runs, strategy):
    grid, strat, summary = runs(strategy)
    assert summary["strategy"] == {"fedamp": "fedamp", "local": "none"}.get(strategy, "fedavg")
    assert summary["status"] == "completed" and "failure" not in summary and summary["aggregated_rounds"] == [1, 2]
    assert [(r["round"], r["aggregated"], r["replies_valid"], r["trained"]) for r in summary["rounds_log"]] == [
        (k, True, 2, sorted(SCENARIOS)) for k in (1, 2)]
    assert {(r["round"], r["scenario"], r["task"]) for r in strat.rows} == {
        (2, s, t) for s in SCENARIOS for t in ("ctr", "ctcvr")}
    assert all(math.isfinite(r["auc"]) and math.isfinite(r["logloss"]) for r in strat.rows)
    assert sorted((r["round"], r["scenario"]) for r in strat.train_log) == [
        (k, s) for k in (1, 2) for s in sorted(SCENARIOS)]
    # Every client trained: what it sent back differs from what it was sent (unless nothing is shared).
    for rnd, (sent, back) in enumerate(zip(grid.down, grid.up), start=1):
        for node, arrays in back.items():
            assert (not arrays) == (strategy == "local")
            assert sum(a.nbytes for a in arrays.values()) == next(
                r["upload_bytes"] for r in strat.train_log if r["scenario"] == strat.node_scenario[node]
                and r["round"] == rnd)
            if arrays:  # finite (NaN would also "differ") and moved
                assert all(np.isfinite(a).all() for a in arrays.values())
                assert any(not np.array_equal(arrays[n], sent[node][n]) for n in arrays)


def test_fedavg_sends_every_scenario_the_same_model_and_shares_all_but_embeddings(runs):
    grid, strat, _ = runs("fedavg")
    sent = list(grid.down[1].values())  # round 2: after one aggregation
    for other in sent[1:]:
        for name in sent[0]:
            np.testing.assert_array_equal(other[name], sent[0][name], err_msg=name)
    names = set(sent[0])
    assert any(classify(n).is_bn for n in names) and any(n.startswith("towers") for n in names)
    assert not any(n.startswith("embedding") for n in names)


def test_fedper_and_fedrep_never_upload_towers(runs):
    for strategy in ("fedper", "fedrep"):
        grid, _, _ = runs(strategy)
        for rnd in grid.up + grid.down:
            for arrays in rnd.values():
                assert arrays and not any(n.startswith("towers") for n in arrays), strategy


def test_local_only_sends_nothing(runs):
    grid, strat, _ = runs("local")
    assert all(not arrays for rnd in grid.up + grid.down for arrays in rnd.values())
    assert [r["upload_bytes"] for r in strat.train_log] == [0] * 2 * len(SCENARIOS)


def test_ditto_evaluates_a_personal_model_that_differs_from_the_global_one(runs):
    runs("ditto")
    state = runs.root / "state" / "ditto"  # <state-dir>/<run folder name>/
    glob = torch.load(state / "NL.pt", weights_only=True)["state"]
    pers = torch.load(state / "NL+personal.pt", weights_only=True)
    assert pers["round"] == 2
    assert any(not torch.equal(glob[n], pers["state"][n]) for n in glob if n.startswith("towers"))


def test_fedamp_weights_favour_similar_models():
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    models = np.stack([a, a + 0.01 * rng.normal(size=50), -a, rng.normal(size=50)])
    xi = attention_weights(models, self_weight=0.5, sigma=5.0)
    np.testing.assert_allclose(xi.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(xi), 0.5)
    assert xi[0, 1] > xi[0, 3] > xi[0, 2]  # the near copy most, the opposite model least
    assert np.all(xi >= 0)
