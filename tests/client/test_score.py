"""pfms-score: a run's scenario model scores new rows; on the scenario's test file its
AUC and LogLoss are the run's own final test metrics; bad input is one line and exit 2."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import inprocess_overrides, run_inprocess
from pfms_client.config import load_config
from pfms_client.data.settings import DatasetSettings
from pfms_client.scoring import main
from pfms_client.streamed_metrics import StreamedTaskMetrics
from pfms_client.metrics import task_metrics
from pfms_client.trained_model import TrainedModelError, load_trained

TINY = ["num_rounds=2", "eval.splits=[test]", "dataset.scenarios=[NL,ES]",
        "dataset.generator.rows_train=3000", "dataset.generator.rows_test=1500"]


@pytest.fixture(scope="module")
def tiny_run(pfms_home, tmp_path_factory):
    """A 2-round, 2-scenario run: its folder and each scenario's test file."""
    overrides = inprocess_overrides(pfms_home, *TINY)
    run_dir = tmp_path_factory.mktemp("score") / "run"
    run_inprocess(overrides, run_dir)
    settings = DatasetSettings.from_config(load_config(overrides).dataset)
    return run_dir, {s: settings.test_path(s) for s in settings.scenarios}


def final_test_metrics(run_dir: Path, scenario: str) -> dict[str, dict[str, float]]:
    with (run_dir / "metrics.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["scenario"] == scenario and r["split"] == "test"]
    last = max(int(r["round"]) for r in rows)
    return {r["task"]: {"auc": float(r["auc"]), "logloss": float(r["logloss"]), "n": int(r["n"])}
            for r in rows if int(r["round"]) == last}


def printed_metrics(text: str) -> dict[str, dict[str, float]]:
    out = {}
    for line in text.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split())
        out[fields["task"]] = {"auc": float(fields["auc"]), "logloss": float(fields["logloss"]), "n": int(fields["n"])}
    return out


@pytest.mark.parametrize("scenario", ["NL", "ES"])
def test_scoring_the_test_file_gives_the_runs_final_test_metrics(tiny_run, tmp_path, capsys, scenario):
    run_dir, tests = tiny_run
    out = tmp_path / "scores.csv"
    assert main([str(run_dir), "--scenario", scenario, "--input", str(tests[scenario]), "--output", str(out)]) == 0
    printed = printed_metrics(capsys.readouterr().out)
    expected = final_test_metrics(run_dir, scenario)
    assert set(printed) == set(expected) == {"ctr", "ctcvr"}
    for task, m in expected.items():
        assert printed[task]["n"] == m["n"] == 1500
        assert abs(printed[task]["auc"] - m["auc"]) < 1e-6
        assert abs(printed[task]["logloss"] - m["logloss"]) < 1e-6
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with tests[scenario].open(newline="") as fh:
        ids = [r["search_id"] for r in csv.DictReader(fh)]
    assert [r["search_id"] for r in rows] == ids  # one output row per input row, in order
    p = np.array([[float(r["p_ctr"]), float(r["p_ctcvr"])] for r in rows])
    assert ((p > 0) & (p < 1)).all()


def test_batch_size_parquet_output_and_no_labels_give_the_same_probabilities(tiny_run, tmp_path, capsys):
    run_dir, tests = tiny_run
    src = tests["NL"]
    base, small = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert main([str(run_dir), "--scenario", "NL", "--input", str(src), "--output", str(base)]) == 0
    assert main([str(run_dir), "--scenario", "NL", "--input", str(src), "--output", str(small),
                 "--batch-size", "97", "--keep"]) == 0
    # the same rows without label columns: no metrics, the same probabilities
    nolabels = tmp_path / "nolabels.csv"
    with src.open(newline="") as fh, nolabels.open("w", newline="") as out:
        reader, writer = csv.DictReader(fh), None
        for row in reader:
            row = {k: v for k, v in row.items() if k not in ("click", "conversion")}
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
    capsys.readouterr()
    third = tmp_path / "c.csv"
    assert main([str(run_dir), "--scenario", "NL", "--input", str(nolabels), "--output", str(third)]) == 0
    assert capsys.readouterr().out == ""  # no labels, no metrics
    a, b = pq.read_table(base), pq.read_table(small)
    assert a.column_names == ["search_id", "p_ctr", "p_ctcvr"] and b.column_names == ["p_ctr", "p_ctcvr"]
    assert a.num_rows == b.num_rows == 1500
    for col in ("p_ctr", "p_ctcvr"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=0, atol=1e-6)
        with third.open(newline="") as fh:
            c = np.array([float(r[col]) for r in csv.DictReader(fh)], dtype=np.float32)
        np.testing.assert_array_equal(c, a[col].to_numpy())  # the CSV text round-trips float32


def test_unseen_ids_take_the_oov_slot(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    trained = load_trained(run_dir, "NL")
    enc = trained.encoding
    vocab = enc.vocabs[1]
    raw = np.array([[vocab[0]] * len(enc.vocabs), [vocab.max() + 12345] * len(enc.vocabs)], dtype=np.int64)
    raw[:, 1] = [vocab[3], vocab.max() + 1]
    x_cat, _ = enc.encode(raw, np.zeros((2, len(enc.schema.numerical)), dtype=np.float32))
    assert x_cat[0, 1] == 4 and x_cat[1, 1] == 0


def _run_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    return copy


def test_a_checkpoint_with_another_scenarios_vocabulary_is_refused(tiny_run, tmp_path):
    run_dir = _run_copy(tiny_run[0], tmp_path)
    ckpt = torch.load(run_dir / "checkpoints" / "ES.pt", weights_only=False)
    ckpt["scenario"] = "NL"  # ES's model, under NL's name, next to NL's encoding
    torch.save(ckpt, run_dir / "checkpoints" / "NL.pt")
    with pytest.raises(TrainedModelError, match=r"another encoding .*vocabulary of field categorical_1"):
        load_trained(run_dir, "NL")


def test_an_encoding_whose_vocabulary_file_changed_is_refused(tiny_run, tmp_path):
    run_dir = _run_copy(tiny_run[0], tmp_path)
    vocab = run_dir / "checkpoints" / "NL.encoding" / "vocab" / "categorical_3.npy"
    v = np.load(vocab)
    np.save(vocab, v + 1)
    with pytest.raises(TrainedModelError, match="do not match its own fingerprint .*vocabulary of field categorical_3"):
        load_trained(run_dir, "NL")


@pytest.mark.parametrize("case, message", [
    ("no-run", "run folder not found"),
    ("scenario", "no checkpoint for scenario 'XX'"),
    ("missing-input", "file not found"),
    ("output-ext", "output must end in .csv or .parquet"),
    ("schema", "column 'numerical_63': declared column is missing from the header"),
    ("bad-cell", "line 3, column 'categorical_2': non-numeric value 'abc'"),
    ("keep", "column 'nope' to keep is not in its header"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, capsys, case, message):
    run_dir, tests = tiny_run
    src = tests["NL"]
    lines = src.read_text().splitlines()
    args = {"run": str(run_dir), "scenario": "NL", "input": str(src), "output": str(tmp_path / "o.csv"), "extra": []}
    if case == "no-run":
        args["run"] = str(tmp_path / "nothing")
    elif case == "scenario":
        args["scenario"] = "XX"
    elif case == "missing-input":
        args["input"] = str(tmp_path / "missing.csv")
    elif case == "output-ext":
        args["output"] = str(tmp_path / "o.txt")
    elif case == "schema":
        bad = tmp_path / "in.csv"
        bad.write_text("\n".join(",".join(line.split(",")[:-3] + line.split(",")[-2:]) for line in lines[:5]) + "\n")
        args["input"] = str(bad)
    elif case == "bad-cell":
        bad = tmp_path / "in.csv"
        row = lines[2].split(",")
        row[2] = "abc"
        bad.write_text("\n".join([*lines[:2], ",".join(row), *lines[3:10]]) + "\n")
        args["input"] = str(bad)
    elif case == "keep":
        args["extra"] = ["--keep", "nope"]
    rc = main([args["run"], "--scenario", args["scenario"], "--input", args["input"], "--output", args["output"],
               *args["extra"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("pfms-score: ") and message in err[0], err
    assert not (tmp_path / "o.csv").exists()


def test_streamed_metrics_equal_task_metrics_on_ties_clipping_and_many_passes(tmp_path):
    rng = np.random.default_rng(7)
    n = 20_000
    p = np.stack([rng.random(n), np.round(rng.random(n), 2)], 1).astype(np.float32)
    p[:50, 0], p[50:100, 0], p[100:150, 0] = 0.0, 1.0, 5e-8  # clipped: they tie at the bounds
    y = (rng.random((n, 2)) < p * 0.8).astype(np.uint8)
    ref = task_metrics(y.astype(np.float32), p, ["a", "b"])
    for rows_per_pass in (1 << 22, 500, 1):  # one pass, many, a range alone
        m = StreamedTaskMetrics(["a", "b"], tmp_path, rows_per_pass=rows_per_pass)
        for s in range(0, n, 3001):
            m.add(y[s:s + 3001], p[s:s + 3001])
        got = m.result()
        for t in ("a", "b"):
            assert abs(got[t]["auc"] - ref[t]["auc"]) < 1e-12
            assert abs(got[t]["logloss"] - ref[t]["logloss"]) < 1e-12
            assert got[t]["positives"] == ref[t]["positives"]


def test_a_shared_embedding_checkpoint_is_refused_in_one_line(tmp_path):
    """Scoring does not rebuild shared-id bucket maps yet: it must say so, not fail on shapes."""
    import torch

    from pfms_client.trained_model import TrainedModelError, load_trained

    (tmp_path / "checkpoints").mkdir()
    torch.save({"scenario": "NL", "state_dict": {"shared_embedding.item_id.weight": torch.zeros(3, 2)}},
               tmp_path / "checkpoints" / "NL.pt")
    with pytest.raises(TrainedModelError, match="strategy.shared_embeddings .*cannot load shared-id tables"):
        load_trained(tmp_path, "NL")
