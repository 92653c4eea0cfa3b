"""pfms-compare: the table numbers on hand-made rows, one real 2 arms x 2 seeds comparison
(and its resumption), and bad input stopping before any run."""

import csv
import json
import math

import numpy as np
import pytest

from pfms_server.experiments import compare_report as cr
from pfms_server.experiments.compare import load_arms, main

SCENARIOS, TASKS = ("NL", "ES"), ("ctr", "ctcvr")


def _rows(arm, seed, auc_base, rounds=(1, 2), split="test"):
    """AUC = auc_base + 0.01 * scenario index + 0.001 * task index + 0.1 * (round - last); LogLoss = 1 - AUC."""
    rows = []
    for k in rounds:
        for i, s in enumerate(SCENARIOS):
            for j, t in enumerate(TASKS):
                auc = auc_base + 0.01 * i + 0.001 * j + 0.1 * (k - rounds[-1])
                rows.append({"arm": arm, "seed": seed, "round": k, "scenario": s, "task": t, "split": split,
                             "auc": auc, "logloss": 1 - auc, "n": 100})
    return rows


@pytest.fixture
def hand_rows():
    return [*_rows("a", 1, 0.70), *_rows("a", 2, 0.72), *_rows("a", 2, 0.0, split="val"),
            *_rows("b", 1, 0.60), *_rows("b", 2, 0.60), *_rows("b", 3, 0.66)]


def test_final_rows_keep_each_runs_last_test_round(hand_rows):
    final = cr.final_rows(hand_rows, "test")
    assert {r["round"] for r in final} == {2} and {r["split"] for r in final} == {"test"}
    assert len(final) == 5 * len(SCENARIOS) * len(TASKS)  # 5 runs


def test_aggregate_means_spread_and_mean_row(hand_rows):
    res = cr.aggregate(cr.final_rows(hand_rows), ["a", "b"])
    cells = [*((s, t) for s in SCENARIOS for t in TASKS), ("mean", "mean")]
    assert [(r["arm"], r["scenario"], r["task"]) for r in res] == [(a, s, t) for a in "ab" for s, t in cells]
    by = {(r["arm"], r["scenario"], r["task"]): r for r in res}
    es_ctcvr = by[("a", "ES", "ctcvr")]  # seeds: 0.711 and 0.731
    assert es_ctcvr["auc_mean"] == pytest.approx(0.721)
    assert es_ctcvr["auc_std"] == pytest.approx(np.std([0.711, 0.731], ddof=1))
    assert es_ctcvr["logloss_mean"] == pytest.approx(0.279) and es_ctcvr["n_seeds"] == 2
    # The mean row: each seed's mean over the 4 cells (0.70 + 0.0055), then over seeds.
    mean_a = by[("a", "mean", "mean")]
    assert mean_a["auc_mean"] == pytest.approx(0.7155)
    assert mean_a["auc_std"] == pytest.approx(np.std([0.7055, 0.7255], ddof=1))
    mean_b = by[("b", "mean", "mean")]
    assert mean_b["n_seeds"] == 3 and mean_b["auc_mean"] == pytest.approx(0.6255)
    assert mean_b["auc_std"] == pytest.approx(np.std([0.6055, 0.6055, 0.6655], ddof=1))
    assert all(r["final_round"] == 2 for r in res)


def test_one_seed_has_nan_spread_and_nan_metrics_are_skipped():
    rows = _rows("a", 1, 0.7)
    rows[-1]["auc"] = math.nan  # ES/ctcvr at round 2: one class only
    res = {(r["scenario"], r["task"]): r for r in cr.aggregate(cr.final_rows(rows))}
    assert math.isnan(res[("NL", "ctr")]["auc_std"]) and res[("NL", "ctr")]["n_seeds"] == 1
    assert math.isnan(res[("ES", "ctcvr")]["auc_mean"]) and res[("ES", "ctcvr")]["n_seeds"] == 0
    assert res[("mean", "mean")]["auc_mean"] == pytest.approx(np.mean([0.70, 0.701, 0.71]))
    assert cr.fmt_spread(0.7, math.nan) == "0.7000" and cr.fmt_spread(math.nan, math.nan) == "n/a"


def test_mean_by_round_band_over_seeds(hand_rows):
    d = cr.mean_by_round(hand_rows)["b"]
    assert d["round"].tolist() == [1, 2]
    assert d["mean"] == pytest.approx([0.5055 + 0.02, 0.6255])
    assert d["min"] == pytest.approx([0.5055, 0.6055]) and d["max"] == pytest.approx([0.5655, 0.6655])


def test_markdown_lists_each_arm_once_with_costs(hand_rows):
    res = cr.aggregate(cr.final_rows(hand_rows))
    timing = [{"arm": "a", "seed": 1, "seconds": 10.0}, {"arm": "a", "seed": 2, "seconds": 14.0},
              {"arm": "b", "seed": 1, "seconds": 5.0}]
    upload = [{"arm": "a", "seed": 1, "round": 1, "scenario": "NL", "bytes": 2048},
              {"arm": "a", "seed": 1, "round": 1, "scenario": "ES", "bytes": 4096},
              {"arm": "b", "seed": 1, "round": 1, "scenario": "NL", "bytes": None}]
    md = cr.markdown(res, timing, upload, seeds=[1, 2, 3], arm_overrides={"a": [], "b": ["train.mu=0"]})
    auc_table = md.split("## Test AUC")[1].split("##")[0]
    assert sum(line.startswith("| a |") for line in auc_table.splitlines()) == 1
    assert sum(line.startswith("| b |") for line in auc_table.splitlines()) == 1
    assert "| a | 0.7100 ± 0.0141 |" in md  # NL/ctr: 0.70, 0.72
    assert "| a | 12.0 ± 2.8 | 2 | 3.0 KiB | 6.0 KiB |" in md
    assert "| b | 5.0 | 1 | not recorded | not recorded |" in md and "no `upload_bytes`" in md
    assert "`train.mu=0`" in md and "final round (2)" in md


def test_paired_differences_subtract_seed_by_seed(hand_rows):
    # a: seeds 1, 2 (0.7055, 0.7255); b: seeds 1, 2, 3 (0.6055, 0.6055, 0.6655). Reference b: pairs on seeds 1, 2.
    paired = {p["arm"]: p for p in cr.paired_differences(cr.final_rows(hand_rows), "b")}
    assert paired["b"]["auc_diff_mean"] == 0 and paired["b"]["n_seeds"] == 3 and paired["b"]["wins"] == 0
    a = paired["a"]
    assert a["n_seeds"] == 2 and a["wins"] == 2 and a["reference"] == "b"
    assert a["auc_diff_mean"] == pytest.approx(0.11) and a["auc_diff_std"] == pytest.approx(np.std([0.10, 0.12], ddof=1))
    # Unpaired, a's and b's spreads (0.014, 0.035) overlap; paired, the difference is far outside its spread.
    assert cr._verdict(a) == "above"
    assert cr._verdict({**a, "auc_diff_mean": -0.11, "wins": 0}) == "below"
    assert cr._verdict({**a, "wins": 1}) == "within spread"  # the seeds disagree
    assert cr._verdict({**a, "auc_diff_std": 0.2}) == "within spread"
    assert cr._verdict({**a, "n_seeds": 1, "auc_diff_std": math.nan}) == "one seed: no spread"
    assert cr._verdict({**a, "n_seeds": 0, "wins": 0, "auc_diff_mean": math.nan, "auc_diff_std": math.nan}) \
        == "no paired seeds"


def test_markdown_shows_the_paired_table(hand_rows):
    final = cr.final_rows(hand_rows)
    md = cr.markdown(cr.aggregate(final), [], [], seeds=[1, 2, 3], arm_overrides={},
                     paired=cr.paired_differences(final, "b"))
    table = md.split("minus b's, paired by seed")[1].split("## ")[0]
    assert "| a | 0.1100 ± 0.0141 | 2/2 | above |" in table
    assert "| b |" not in table


# --- end to end: conf/compare/smoke.yaml = pfmsmtrec and no-conflict, seeds 1, 2, tiny data, 2 rounds ------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    home = tmp_path_factory.mktemp("compare_home")
    out = home / "cmp"
    # Two scenarios: every mechanism checked here is per scenario, and each further one
    # adds an in-process client to each of the 4 runs.
    argv = ["--arms", "smoke", "--out", str(out), f"paths.home={home}", "dataset.scenarios=[NL,ES]"]
    assert main(argv) == 0
    return argv, out


def _csv(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_compare_writes_table_with_the_right_rows(smoke):
    _, out = smoke
    rows = _csv(out / "results.csv")
    assert list(rows[0]) == cr.RESULT_FIELDS
    cells = [(s, t) for s in ("NL", "ES") for t in ("ctr", "ctcvr")]
    assert [(r["arm"], r["scenario"], r["task"]) for r in rows] == [
        (a, s, t) for a in ("pfmsmtrec", "no-conflict") for s, t in [*cells, ("mean", "mean")]]
    assert all(r["n_seeds"] == "2" and r["final_round"] == "2" for r in rows)
    assert all(0.0 <= float(r["auc_mean"]) <= 1.0 and float(r["auc_std"]) >= 0 for r in rows)
    for arm in ("pfmsmtrec", "no-conflict"):  # the mean row is the mean of each seed's summary
        seeds = [json.loads((out / "runs" / f"{arm}-seed{s}" / "summary.json").read_text())["test_mean_auc"]
                 for s in (1, 2)]
        mean_row = next(r for r in rows if r["arm"] == arm and r["scenario"] == "mean")
        assert float(mean_row["auc_mean"]) == pytest.approx(np.mean(seeds))
        assert float(mean_row["auc_std"]) == pytest.approx(np.std(seeds, ddof=1))
    md = (out / "results.md").read_text()
    # AUC, LogLoss, per scenario, cost, arms; no-conflict also in the paired table against pfmsmtrec
    assert sum(line.startswith("| pfmsmtrec |") for line in md.splitlines()) == 5
    assert sum(line.startswith("| no-conflict |") for line in md.splitlines()) == 6
    per_scenario = _csv(out / "per_scenario.csv")
    assert list(per_scenario[0]) == cr.PER_SCENARIO_FIELDS
    assert len(per_scenario) == 2 * 2 * 3  # arms x scenarios x (2 tasks + their mean)
    by_cell = {(r["arm"], r["scenario"], r["task"]): r for r in per_scenario}
    for r in rows[:-1]:  # results.csv's cells agree with per_scenario.csv's
        if r["arm"] == "pfmsmtrec" and r["scenario"] != "mean":
            assert float(by_cell[(r["arm"], r["scenario"], r["task"])]["auc_mean"]) == pytest.approx(
                float(r["auc_mean"]))
    paired = {p["arm"]: p for p in _csv(out / "paired.csv")}
    assert list(next(iter(paired.values()))) == cr.PAIRED_FIELDS
    seed_auc = {(a, s): json.loads((out / "runs" / f"{a}-seed{s}" / "summary.json").read_text())["test_mean_auc"]
                for a in ("pfmsmtrec", "no-conflict") for s in (1, 2)}
    diffs = [seed_auc[("no-conflict", s)] - seed_auc[("pfmsmtrec", s)] for s in (1, 2)]
    assert float(paired["no-conflict"]["auc_diff_mean"]) == pytest.approx(np.mean(diffs))
    assert paired["no-conflict"]["reference"] == "pfmsmtrec" and float(paired["pfmsmtrec"]["auc_diff_mean"]) == 0
    assert (out / "auc_by_round.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timing = _csv(out / "timing.csv")
    assert [(t["arm"], t["seed"]) for t in timing] == [
        ("pfmsmtrec", "1"), ("no-conflict", "1"), ("pfmsmtrec", "2"), ("no-conflict", "2")]
    assert all(float(t["seconds"]) > 0 for t in timing)
    upload = _csv(out / "upload_bytes.csv")
    assert len(upload) == 2 * 2 * 2 * 2  # arms x seeds x rounds x scenarios
    assert all(int(u["bytes"]) > 0 for u in upload)


def test_rerun_skips_finished_runs(smoke, capsys):
    argv, out = smoke
    summaries = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    before = (out / "results.csv").read_text()
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped (finished earlier") == 4 and "done in" not in printed
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries
    assert (out / "results.csv").read_text() == before


def test_rerun_with_another_config_is_refused(smoke, capsys):
    argv, out = smoke
    assert main([*argv, "num_rounds=3"]) == 2
    assert "num_rounds: 2 -> 3" in capsys.readouterr().err


def test_interrupted_run_is_redone_with_the_same_numbers(smoke, capsys):
    argv, out = smoke
    before = (out / "results.csv").read_text()
    (out / "runs" / "no-conflict-seed2" / "summary.json").unlink()  # as if stopped mid-run
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped (finished earlier") == 3
    assert "[4/4] no-conflict seed=2 ... done in" in printed
    assert (out / "results.csv").read_text() == before  # fixed seeds: the same run gives the same metrics


def test_dry_run_composes_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(["--arms", "default", "--seeds", "7", "--dry-run", "--out", str(out), f"paths.home={tmp_path}"]) == 0
    printed = capsys.readouterr().out
    assert "9 arms x 1 seeds = 9 runs" in printed and "[9/9] no-template seed=7" in printed
    assert not out.exists()


def test_mu_arms_set_the_proximal_weight_each_run_uses():
    from pfms_client.local_update import train_config
    from pfms_server.experiments.compare import compose

    arms = load_arms("mu").arms
    mus = {a: train_config(compose(o, a)).mu for a, o in arms.items() if a != "local"}
    assert mus == {"mu0.003": 0.003, "mu0": 0.0, "mu0.001": 0.001, "mu0.01": 0.01}
    assert train_config(compose(load_arms("full").arms["mu0"], "mu0")).mu == 0.0


# --- bad input stops before any run --------------------------------------------------------------------
def _fails(argv, tmp_path, capsys, *needles):
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out), f"paths.home={tmp_path}"]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()  # nothing started


def test_unknown_arm_is_named(tmp_path, capsys):
    _fails(["--arms", "default", "--only", "pfmsmtrec,fedavgg"], tmp_path, capsys, "'fedavgg'", "no-conflict")


def test_unknown_arms_file_is_named(tmp_path, capsys):
    _fails(["--arms", "nosuch"], tmp_path, capsys, "'nosuch'", "default")


def test_arm_that_does_not_compose_is_named(tmp_path, capsys):
    arms = tmp_path / "arms.yaml"
    arms.write_text("arms:\n  ok: []\n  typo: [strategy.conflict.methd=mean]\nseeds: [1, 2]\n")
    _fails(["--arms", str(arms)], tmp_path, capsys, "arm 'typo'", "strategy.conflict.methd")
    arms.write_text("arms:\n  ok: []\n  nostrat: [strategy=nosuch]\n")
    _fails(["--arms", str(arms)], tmp_path, capsys, "arm 'nostrat'", "nosuch")
    arms.write_text("arms:\n  ok: []\n  bad-algo: [strategy.algorithm=fedsgd]\n")
    _fails(["--arms", str(arms)], tmp_path, capsys, "arm 'bad-algo'", "fedsgd")


def test_bad_common_override_seeds_and_keys_are_named(tmp_path, capsys):
    _fails(["--arms", "smoke", "num_roundz=3"], tmp_path, capsys, "num_roundz")
    _fails(["--arms", "smoke", "--seeds", "1,x"], tmp_path, capsys, "--seeds", "1,x")
    arms = tmp_path / "arms.yaml"
    arms.write_text("arms:\n  ok: []\nseed: [1]\n")
    _fails(["--arms", str(arms)], tmp_path, capsys, "unknown key(s) ['seed']")


def test_the_conflict_arms_differ_only_by_the_conflict_module(smoke):
    """Same seed: round 1 trains the same model in both arms; from the first aggregation on, CAGrad and
    the plain mean give other scenario experts, so a round that ignored strategy.conflict.method fails here."""
    _, out = smoke
    for seed in (1, 2):
        logs = {a: json.loads((out / "runs" / f"{a}-seed{seed}" / "train_log.json").read_text())
                for a in ("pfmsmtrec", "no-conflict")}
        first = {a: {r["scenario"]: r["train_bce"] for r in log if r["round"] == 1} for a, log in logs.items()}
        assert first["pfmsmtrec"] == first["no-conflict"] and len(first["pfmsmtrec"]) == 2
        states = {}
        for a in logs:
            with np.load(out / "runs" / f"{a}-seed{seed}" / "server_state" / "arrays.npz") as npz:
                states[a] = {k: npz[k] for k in npz.files if "/experts.scenario." in k and k.startswith("personal/")}
        assert states["pfmsmtrec"].keys() == states["no-conflict"].keys() and states["pfmsmtrec"]
        assert all(np.all(np.isfinite(v)) for s in states.values() for v in s.values())
        assert all(not np.allclose(states["pfmsmtrec"][k], states["no-conflict"][k], atol=1e-6)
                   for k in states["pfmsmtrec"] if k.endswith(".linear.weight"))


# --- failed runs: reported as FAILED with why, no AUC; the others finish; exit 1 -----------------
def test_markdown_marks_failed_runs(hand_rows):
    final = cr.final_rows(hand_rows, "test")
    failed = [{"arm": "c", "seed": 1, "why": "/d/ES/test.csv: file | not found"},
              {"arm": "b", "seed": 3, "why": "no round aggregated in 2 round(s)"}]
    md = cr.markdown(cr.aggregate(final), [], [], seeds=[1, 2, 3], arm_overrides={"a": [], "c": ["x=1"], "b": []},
                     failed=failed)
    rows = [line for line in md.splitlines() if line.startswith("| c |")]
    assert rows[0] == "| c | " + " | ".join(["FAILED"] * 5) + " |"  # AUC: 4 cells and the mean
    assert rows[1] == rows[0]  # LogLoss
    assert "| c | 1 | /d/ES/test.csv: file \\| not found |" in md
    assert "| b | 3 | no round aggregated in 2 round(s) |" in md
    # b's cells average its completed seeds only; the arms keep the arms file's order
    b_auc = next(line for line in md.splitlines() if line.startswith("| b |"))
    assert "FAILED" not in b_auc and "0.6" in b_auc
    order = [line.split("|")[1].strip() for line in md.split("## Test AUC")[1].splitlines()[4:7]]
    assert order == ["a", "c", "b"]


def test_a_failed_arm_is_reported_and_the_others_finish(tmp_path, capsys):
    import shutil

    from conftest import FIXTURES

    good, root = tmp_path / "good", tmp_path / "bad"  # the real sample as NL and ES; bad lacks ES's test.csv
    for folder in (good, root):
        for scenario in ("NL", "ES"):
            (folder / f"AliExpress_{scenario}").mkdir(parents=True)
            for name in ("train", "test"):
                shutil.copy(FIXTURES / "aliexpress_sample" / f"rechub_US_{name}.csv",
                            folder / f"AliExpress_{scenario}" / f"{name}.csv")
    (root / "AliExpress_ES" / "test.csv").unlink()
    arms = tmp_path / "arms.yaml"
    arms.write_text(
        f"arms:\n  good: ['dataset.root={good}']\n  bad: ['dataset.root={root}']\n"
        "seeds: [1]\noverrides: [dataset=aliexpress, 'dataset.scenarios=[NL,ES]', num_rounds=1, 'eval.splits=[test]']\n")
    out = tmp_path / "cmp"
    argv = ["--arms", str(arms), "--out", str(out), f"paths.home={tmp_path / 'home'}"]
    why = f"{root / 'AliExpress_ES' / 'test.csv'}: file not found"
    assert main(argv) == 1
    printed = capsys.readouterr()
    assert f"[2/2] bad seed=1 ... FAILED in" in printed.out and why in printed.out
    assert "[1/2] good seed=1 ... done in" in printed.out
    assert f"  FAILED bad seed=1: {why}" in printed.err and "1 of 2 runs FAILED" in printed.err
    summary = json.loads((out / "runs" / "bad-seed1" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failure"] == why
    assert {r["arm"] for r in _csv(out / "results.csv")} == {"good"}  # no AUC for the failed arm
    assert _csv(out / "failed.csv") == [{"arm": "bad", "seed": "1", "why": why}]
    md = (out / "results.md").read_text()
    assert f"| bad | 1 | {why} |" in md and "| bad | FAILED |" in md
    # Again: the completed run is skipped, the failed one redone (and fails again).
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "[1/2] good seed=1 ... skipped" in printed and "[2/2] bad seed=1 ... FAILED in" in printed


def test_a_centralized_arm_on_bad_data_fails_with_the_same_line(tmp_path, capsys):
    import shutil

    from conftest import FIXTURES

    root = tmp_path / "bad"
    for scenario in ("NL", "ES"):
        (root / f"AliExpress_{scenario}").mkdir(parents=True)
        for name in ("train", "test"):
            shutil.copy(FIXTURES / "aliexpress_sample" / f"rechub_US_{name}.csv",
                        root / f"AliExpress_{scenario}" / f"{name}.csv")
    path = root / "AliExpress_NL" / "train.csv"
    lines = path.read_text().splitlines(True)
    cells = lines[4].split(",")
    cells[3] = "x" + cells[3]  # line 5's categorical_3 is no longer an integer id
    lines[4] = ",".join(cells)
    path.write_text("".join(lines))
    arms = tmp_path / "arms.yaml"
    arms.write_text(f"arms:\n  central: [strategy=centralized]\nseeds: [1]\noverrides: [dataset=aliexpress, "
                    f"'dataset.root={root}', 'dataset.scenarios=[NL,ES]', num_rounds=1]\n")
    assert main(["--arms", str(arms), "--out", str(tmp_path / "cmp"), f"paths.home={tmp_path / 'home'}"]) == 1
    failed = _csv(tmp_path / "cmp" / "failed.csv")
    assert [(f["arm"], f["seed"]) for f in failed] == [("central", "1")]
    assert failed[0]["why"].startswith(f"{path} line 5, column 'categorical_3': ")
    assert "[1/1] central seed=1 ... FAILED in" in capsys.readouterr().out
    assert not (tmp_path / "cmp" / "auc_by_round.png").exists()  # nothing to plot
    assert "| central | FAILED |" in (tmp_path / "cmp" / "results.md").read_text()


# --- per scenario: from run folders written by hand -------------------------------------------
def _fake_run(out, arm, seed, aucs, last_round=2):
    """A finished run folder: metrics.csv with test AUCs ``aucs[(scenario, task)]`` at ``last_round``
    (and 0.5 everywhere at round 1, which the table must ignore), summary.json, compare.json."""
    from omegaconf import OmegaConf

    from pfms_server import report
    from pfms_server.experiments.compare import Run

    run_dir = out / "runs" / f"{arm}-seed{seed}"
    run_dir.mkdir(parents=True)
    rows = [{"round": k, "scenario": s, "task": t, "split": split, "auc": auc if k == last_round else 0.5,
             "logloss": 0.1, "n": 100}
            for k in (1, last_round) for (s, t), auc in aucs.items() for split in ("val", "test")]
    report.write_csv(run_dir / "metrics.csv", rows)
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    (run_dir / "compare.json").write_text(json.dumps({"wall_seconds": 1.0}))
    cfg = OmegaConf.create({"dataset": {"scenarios": list(SCENARIOS),
                                        "schema": {"tasks": [{"name": t} for t in TASKS]}}})
    return Run(arm, seed, [], run_dir, cfg)


def test_per_scenario_table_from_run_folders(tmp_path):
    from pfms_server.experiments.compare import write_report

    #            NL/ctr NL/ctcvr ES/ctr ES/ctcvr
    table = {("ref", 1): (0.70, 0.80, 0.60, 0.90),
             ("ref", 2): (0.72, 0.82, 0.62, 0.86),
             ("loc", 1): (0.71, 0.78, 0.50, 0.92),
             ("loc", 2): (0.74, 0.80, 0.54, 0.90)}
    cells = [(s, t) for s in SCENARIOS for t in TASKS]
    runs = [_fake_run(tmp_path, arm, seed, dict(zip(cells, aucs))) for (arm, seed), aucs in table.items()]
    write_report(tmp_path, runs, {"ref": [], "loc": ["strategy=local"]}, [1, 2], [])
    rows = _csv(tmp_path / "per_scenario.csv")
    by = {(r["arm"], r["scenario"], r["task"]): r for r in rows}
    assert [(r["arm"], r["scenario"], r["task"]) for r in rows] == [
        (a, s, t) for a in ("ref", "loc") for s in SCENARIOS for t in (*TASKS, "mean")]
    # loc ES/ctr: AUCs 0.50, 0.54 (mean 0.52); minus ref's 0.60, 0.62: -0.10, -0.08.
    es = by[("loc", "ES", "ctr")]
    assert float(es["auc_mean"]) == pytest.approx(0.52)
    assert float(es["auc_std"]) == pytest.approx(np.std([0.50, 0.54], ddof=1))
    assert float(es["auc_diff_mean"]) == pytest.approx(-0.09)
    assert float(es["auc_diff_std"]) == pytest.approx(np.std([-0.10, -0.08], ddof=1))
    assert (es["n_seeds"], es["n_paired"], es["wins"], es["reference"]) == ("2", "2", "0", "ref")
    # loc NL (mean of its two tasks): seed 1 (0.71 + 0.78) / 2 - (0.70 + 0.80) / 2 = -0.005; seed 2 +0.0.
    nl = by[("loc", "NL", "mean")]
    assert float(nl["auc_mean"]) == pytest.approx(np.mean([0.745, 0.77]))
    assert float(nl["auc_diff_mean"]) == pytest.approx(-0.0025) and nl["wins"] == "0"
    assert float(by[("loc", "ES", "ctcvr")]["auc_diff_mean"]) == pytest.approx(0.03)
    assert by[("loc", "ES", "ctcvr")]["wins"] == "2"
    ref = by[("ref", "NL", "ctr")]
    assert float(ref["auc_mean"]) == pytest.approx(0.71) and float(ref["auc_diff_mean"]) == 0.0
    md = (tmp_path / "results.md").read_text()
    assert "## Test AUC per scenario: difference from ref's, paired by seed" in md
    section = md.split("## Test AUC per scenario")[1].split("\n## ")[0].splitlines()
    assert "| arm | NL/ctr | NL/ctcvr | NL (mean) | ES/ctr | ES/ctcvr | ES (mean) |" in section
    loc_line = next(line for line in section if line.startswith("| loc | "))
    assert "-0.0900 ± 0.0141 (0/2)" in loc_line and "+0.0300 ± 0.0141 (2/2)" in loc_line
    assert next(line for line in section if line.startswith("| ref | ")).startswith("| ref | 0.7100 ± 0.0141")


def test_per_scenario_pairs_only_the_seeds_both_arms_have():
    rows = [*_rows("ref", 1, 0.70), *_rows("ref", 2, 0.72), *_rows("b", 2, 0.60), *_rows("b", 3, 0.66)]
    rows = [r for r in rows if not (r["arm"] == "b" and r["scenario"] == "ES" and r["seed"] == 3)]
    by = {(r["arm"], r["scenario"], r["task"]): r for r in cr.per_scenario(cr.final_rows(rows), "ref")}
    nl, es = by[("b", "NL", "ctr")], by[("b", "ES", "ctr")]
    assert (nl["n_seeds"], nl["n_paired"]) == (2, 1)  # seed 3 has no reference
    assert nl["auc_diff_mean"] == pytest.approx(0.60 - 0.72) and math.isnan(nl["auc_diff_std"])
    assert (es["n_seeds"], es["n_paired"]) == (1, 1)
