"""The centralized baseline: pooled rows + scenario id, same splits, seeds and run folder as the federated runs."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from pfms_server.experiments.centralized import pool_scenarios, run_centralized
from pfms_client.config import load_config
from pfms_client.data import load_scenario
from pfms_server import report

TINY = ["dataset.generator.rows_train=1500", "dataset.generator.rows_test=800", "num_rounds=2",
        "eval.splits=[val,test]", "strategy=centralized"]
SCENARIOS = ("NL", "ES", "FR", "US")


def _cfg(home, *extra):
    return load_config([f"paths.home={home}", *TINY, *extra])


@pytest.fixture(scope="module")
def first_run(pfms_home, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("centralized") / "run"
    rows, summary = run_centralized(_cfg(pfms_home), run_dir)
    return run_dir, rows, summary


def test_centralized_sees_the_union_of_rows(pfms_home):
    cfg = _cfg(pfms_home)
    pooled = pool_scenarios(cfg.dataset)
    clients = {s: load_scenario(cfg.dataset, s) for s in SCENARIOS}
    assert pooled.scenarios == list(SCENARIOS)
    assert len(pooled.train) == sum(len(c.train) for c in clients.values())
    for s, client in clients.items():
        for split in ("train", "val", "test"):
            mine, theirs = pooled.parts[s][split], getattr(client, split)
            assert len(mine) == len(theirs) > 0, (s, split)
            # The same rows in the same order: labels and (untransformed) numericals match exactly.
            assert torch.equal(mine.y, theirs.y), (s, split)
            assert torch.equal(mine.x_num, theirs.x_num), (s, split)
            assert (mine.x_cat[:, -1] == mine.x_cat[0, -1]).all()  # one scenario id per scenario
    # The pooled train rows are the scenarios' train rows one after another.
    assert torch.equal(pooled.train.y, torch.cat([c.train.y for c in clients.values()]))
    ids = {s: int(pooled.parts[s]["test"].x_cat[0, -1]) for s in SCENARIOS}
    assert sorted(ids.values()) == [1, 2, 3, 4]  # every scenario its own vocab slot, none OOV


def test_scenario_id_is_one_more_field_and_the_vocab_is_pooled(pfms_home):
    cfg = _cfg(pfms_home)
    pooled = pool_scenarios(cfg.dataset)
    client = load_scenario(cfg.dataset, "NL")
    assert len(pooled.field_dims) == len(client.field_dims) + 1
    assert pooled.categorical_names == [*client.categorical_names, "scenario_id"]
    assert pooled.field_dims[-1] == len(SCENARIOS) + 1  # + the OOV slot
    others = [load_scenario(cfg.dataset, s) for s in SCENARIOS]
    for f in range(len(client.field_dims)):  # min_count 1: the union of every scenario's ids
        assert pooled.field_dims[f] >= max(c.field_dims[f] for c in others)


def test_run_writes_the_federated_run_folder(pfms_home, first_run):
    run_dir, rows, summary = first_run
    csv_rows = report.read_csv(run_dir / "metrics.csv")
    assert len(csv_rows) == len(rows) == 4 * 2 * 2 * 2
    assert {(r["round"], r["scenario"], r["task"], r["split"]) for r in csv_rows} == {
        (k, s, t, sp) for k in (1, 2) for s in SCENARIOS for t in ("ctr", "ctcvr") for sp in ("val", "test")}
    assert all(math.isfinite(r["logloss"]) and r["n"] > 0 for r in csv_rows)
    # AUC is finite wherever both classes occur; 150 tiny val rows may hold no CTCVR positive.
    cfg = _cfg(pfms_home)
    tasks, clients = ["ctr", "ctcvr"], {s: load_scenario(cfg.dataset, s) for s in SCENARIOS}
    for r in csv_rows:
        y = getattr(clients[r["scenario"]], r["split"]).y[:, tasks.index(r["task"])]
        assert math.isfinite(r["auc"]) == (0 < float(y.sum()) < len(y)), r
    assert all(math.isfinite(r["auc"]) for r in csv_rows if r["split"] == "test" or r["task"] == "ctr")
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert math.isfinite(on_disk["test_mean_auc"]) and on_disk["strategy"] == "centralized"
    assert on_disk["best_val_round"] in (1, 2) and on_disk["final_round"] == 2
    log = json.loads((run_dir / "train_log.json").read_text())
    assert [e["round"] for e in log] == [1, 2] and all(e["upload_bytes"] == 0 for e in log)
    assert all(math.isfinite(e["train_bce"]) and e["num_examples"] > 0 for e in log)
    for name in ("config.yaml", "auc.png", "checkpoints/centralized.pt"):
        assert (run_dir / name).is_file(), name
    ckpt = torch.load(run_dir / "checkpoints/centralized.pt", weights_only=False)
    assert len(ckpt["field_dims"]) == 17 and ckpt["scenarios"] == list(SCENARIOS)


def test_summary_has_the_servers_keys_and_values(first_run):
    """The same summary pfms_server.server_app.summarize makes from these rows (bar timing and alpha/beta)."""
    from pfms_server.server_app import summarize

    _, rows, summary = first_run
    fake = SimpleNamespace(rows=rows, rule=SimpleNamespace(name="centralized"), num_rounds=2,
                           state=SimpleNamespace(scenarios={}), eval_splits=["val", "test"])
    expected = summarize(fake, summary["seconds"])
    assert set(summary) == set(expected)
    for key in set(expected) - {"hyperparams"}:
        assert summary[key] == expected[key], key


def test_same_seed_same_metrics(pfms_home, tmp_path, first_run):
    _, rows, _ = first_run
    again, _ = run_centralized(_cfg(pfms_home, "server.plot=false"), tmp_path / "again")
    assert again == rows


def test_refuses_a_federated_strategy(pfms_home, tmp_path):
    cfg = load_config([f"paths.home={pfms_home}", *TINY[:-1], "strategy=fedavg"])
    with pytest.raises(ValueError, match="strategy=centralized"):
        run_centralized(cfg, tmp_path / "x")
