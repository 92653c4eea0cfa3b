"""In-process federation of 4 synthetic scenarios: it learns, and it is reproducible."""

import csv
import json
import math

import pytest

from conftest import LEARNING_DATA, inprocess_overrides, run_inprocess


@pytest.fixture(scope="module")
def two_runs(pfms_home, tmp_path_factory):
    """Run 0 on the default data (it must learn); runs 1 and 2 on the small data of two
    scenarios (reproducibility shows with two), same seed."""
    out = []
    for i, data in enumerate([LEARNING_DATA, None, None]):
        run_dir = tmp_path_factory.mktemp(f"run{i}")
        extra = {"data": data} if data is not None else {}
        plot = f"server.plot={str(i == 0).lower()}"  # run 0's folder is checked whole
        scenarios = [] if i == 0 else ["dataset.scenarios=[NL,ES]"]
        _, strategy, summary = run_inprocess(inprocess_overrides(pfms_home, "num_rounds=3", plot, *scenarios, **extra),
                                             run_dir)
        out.append((run_dir, strategy, summary))
    return out


def test_every_scenario_and_task_learns(two_runs):
    _, strategy, summary = two_runs[0]
    final = [r for r in summary["final"] if r["split"] == "test"]
    assert {(r["scenario"], r["task"]) for r in final} == {
        (s, t) for s in ("NL", "ES", "FR", "US") for t in ("ctr", "ctcvr")
    }
    for row in final:
        assert row["auc"] > 0.6, row
        assert 0 < row["logloss"] < 0.5, row
    assert summary["final_round"] == 3
    assert summary["best_val_round"] in (1, 2, 3) and summary["best_val_round_test_mean_auc"] > 0.6


def test_fixed_seeds_give_identical_metrics(two_runs):
    _, (_, s1, _), (_, s2, _) = two_runs
    key = lambda r: (r["round"], r["scenario"], r["task"], r["split"])
    a = {key(r): (r["auc"], r["logloss"]) for r in s1.rows}
    b = {key(r): (r["auc"], r["logloss"]) for r in s2.rows}
    assert a == b and len(a) == 3 * 2 * 2 * 2  # rounds x scenarios x tasks x splits


def test_run_folder_contents(two_runs):
    run_dir, strategy, _ = two_runs[0]
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["round", "scenario", "task", "split", "auc", "logloss", "n"]
    assert len(rows) == 3 * 4 * 2 * 2
    assert (run_dir / "auc.png").stat().st_size > 1000
    for s in ("NL", "ES", "FR", "US"):
        assert (run_dir / "checkpoints" / f"{s}.pt").is_file()
    meta = json.loads((run_dir / "server_state" / "state.json").read_text())
    assert meta["round"] == 3 and set(meta["scenarios"]) == {"NL", "ES", "FR", "US"}
    for sc in meta["scenarios"].values():
        alpha = sc["alpha"]["value"]
        assert 0.0 <= alpha <= 1.0 and not math.isclose(alpha, 0.1)  # learned, moved off init
        assert sc["beta"] and all(0.0 <= b["value"] <= 1.0 for b in sc["beta"].values())
