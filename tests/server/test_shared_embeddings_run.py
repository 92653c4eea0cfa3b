"""strategy.shared_embeddings in the real apps, in process: on, every node ends a round with the
same shared rows, the count-weighted mean of what the nodes touched; off, today's numbers exactly."""

import numpy as np
import pytest

from conftest import run_inprocess
from pfms_client.template import is_shared_table

TINY = ["dataset.generator.rows_train=1500", "dataset.generator.rows_test=800", "num_rounds=2",
        "eval.splits=[test]", "eval.every=2", "server.plot=false", "train.num_threads=1"]

# (round, scenario, task, split, auc, logloss) of the TINY PF-MSMTrec run made by the code before the
# switch existed (commit cc7e999, train.num_threads=1): with the switch off, a run must give these. Exactly
# on the machine that recorded them; another CPU picks other SIMD kernels, whose float sums differ in the
# last bits (an AMD EPYC gave loglosses 7e-11 away, AUCs equal). Hence rel=1e-7: any change in what is
# computed (another init, order, tensor or step) moves these by > 1e-4.
BEFORE_THE_SWITCH = [(2, 'ES', 'ctcvr', 'test', 0.6184045226130653, 0.03147570478408086),
    (2, 'ES', 'ctr', 'test', 0.5040891312077752, 0.17208267673478525),
    (2, 'FR', 'ctcvr', 'test', 0.45990764063811923, 0.044865978409109476),
    (2, 'FR', 'ctr', 'test', 0.4735338392061688, 0.21161723442584823),
    (2, 'NL', 'ctcvr', 'test', 0.10714285714285715, 0.017997953629751873),
    (2, 'NL', 'ctr', 'test', 0.4023739764104876, 0.10804248120349402),
    (2, 'US', 'ctcvr', 'test', 0.8574120603015076, 0.03137083035628622),
    (2, 'US', 'ctr', 'test', 0.5900866943083302, 0.2065330256741115)]


def _recording_grid():
    from test_baselines import RecordingGrid

    return RecordingGrid


def test_switch_off_gives_the_numbers_of_the_code_before_it(pfms_home, tmp_path):
    _, strat, summary = run_inprocess([f"paths.home={pfms_home}", *TINY], tmp_path / "off")
    assert summary["status"] == "completed"
    rows = sorted((r["round"], r["scenario"], r["task"], r["split"], r["auc"], r["logloss"]) for r in strat.rows)
    want = sorted(BEFORE_THE_SWITCH)
    assert [r[:4] for r in rows] == [w[:4] for w in want]
    assert [r[4:] for r in rows] == [pytest.approx(w[4:], rel=1e-7) for w in want]
    assert {r["upload_bytes"] for r in strat.train_log} == {182280}  # no new tensor travels


# fedavg: with_shared_embeddings(fedavg_round), unit-tested; values: float32 values or float16 changes
@pytest.mark.parametrize("strategy, values", [("pfmsmtrec", "float32"), ("pfmsmtrec", "float16-delta")])
def test_switch_on_every_node_ends_with_the_same_shared_rows(pfms_home, tmp_path, strategy, values):
    grid, strat, summary = run_inprocess(
        [f"paths.home={pfms_home}", *TINY, f"strategy={strategy}", "strategy.shared_embeddings.enabled=true",
         "strategy.shared_embeddings.buckets=512", f"strategy.shared_embeddings.values={values}"],
        tmp_path / values, _recording_grid())
    assert summary["status"] == "completed" and summary["aggregated_rounds"] == [1, 2]
    (down1, down2), (up1, _) = grid.down, grid.up
    tables = sorted(n for n in next(iter(down1.values())) if is_shared_table(n))
    assert tables == [f"shared_embedding.categorical_{i}.weight" for i in sorted(range(2, 17), key=str)]
    nodes = sorted(down2)
    for table in tables:
        assert down1[nodes[0]][table].shape == (513, 8)
        for node in nodes[1:]:  # one copy for everybody, after the round as before it
            np.testing.assert_array_equal(down2[node][table], down2[nodes[0]][table])
        unit = table.rpartition(".")[0]
        sums, weights = np.zeros((513, 8)), np.zeros(513)
        for node in nodes:  # uploads carry only touched rows, with their counts
            third = "values" if values == "float32" else "deltas"
            rows, counts, sent = (up1[node][f"{unit}.{p}"] for p in ("rows", "counts", third))
            assert table not in up1[node] and 0 < len(rows) < 513 and counts.min() >= 1
            assert f"{unit}.{'deltas' if third == 'values' else 'values'}" not in up1[node]
            if third == "deltas":  # the change from the table this node received
                assert sent.dtype == np.float16
                sent = down1[node][table][rows] + sent.astype(np.float64)
            sums[rows] += counts[:, None] * sent
            weights[rows] += counts
        touched = weights > 0
        expect = down1[nodes[0]][table].copy()
        expect[touched] = (sums[touched] / weights[touched, None]).astype(np.float32)
        np.testing.assert_allclose(down2[nodes[0]][table], expect, rtol=1e-6, atol=1e-7)
        assert np.array_equal(down2[nodes[0]][table][~touched], down1[nodes[0]][table][~touched])
    for rnd, back in enumerate(grid.up, start=1):  # the reported upload bytes are those touched rows
        for node, arrays in back.items():
            assert sum(a.nbytes for a in arrays.values()) == next(
                r["upload_bytes"] for r in strat.train_log
                if r["scenario"] == strat.node_scenario[node] and r["round"] == rnd)


def test_switch_on_local_training_keeps_the_tables_home(pfms_home, tmp_path):
    grid, strat, summary = run_inprocess(
        [f"paths.home={pfms_home}", *TINY, "strategy=local", "strategy.shared_embeddings.enabled=true",
         "strategy.shared_embeddings.buckets=512"], tmp_path / "local", _recording_grid())
    assert summary["status"] == "completed"
    assert all(not arrays for back in grid.up for arrays in back.values())
    assert all(np.isfinite(r["auc"]) for r in strat.rows)
