"""Synthetic generator: determinism, rates, per-scenario shift, learnability, safe writing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import CONF_DATASET as CONF
from pfms_client.data import DataValidationError, ensure_generated, load_scenario
from pfms_client.data.csv_writer import CsvWriter
from pfms_client.data.readers import read_csv_checked
from pfms_client.data.schema import DatasetSchema
from pfms_client.data.synthetic import aliexpress as gen
from pfms_client.data.synthetic.aliexpress import (
    CATEGORICAL,
    COLUMNS,
    NUMERICAL,
    ScenarioArrays,
    simulate_scenario,
)
from pfms_client.data.synthetic.cli import main as generate_main
from pfms_client.data.synthetic.params import GeneratorParams

SCENARIOS = ["NL", "ES", "FR", "US"]
SMALL = {"rows_train": 1500, "rows_test": 500, "seed": 5}


def synthetic_cfg(root: Path, **generator_updates) -> dict:
    node = OmegaConf.create({"seed": 0, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "synthetic.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg["root"] = str(root)
    cfg["generator"].update(generator_updates)
    return cfg


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def default_scenarios() -> dict[str, ScenarioArrays]:
    """All four scenarios at the default size, in memory (~1 s)."""
    params = GeneratorParams()
    return {s: simulate_scenario(s, params) for s in SCENARIOS}


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_one_scenario_alone_equals_full_run(tmp_path):
    gen.generate(tmp_path / "a", SCENARIOS, **SMALL)
    gen.generate(tmp_path / "b", SCENARIOS, **SMALL)
    for s in SCENARIOS:
        assert _files(tmp_path / "a" / s) == _files(tmp_path / "b" / s)
    assert (tmp_path / "a" / "meta.json").read_bytes() == (
        tmp_path / "b" / "meta.json"
    ).read_bytes()
    gen.generate_scenario(tmp_path / "c", "FR", **SMALL)
    assert _files(tmp_path / "c" / "FR") == _files(tmp_path / "a" / "FR")
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")) == [
        "FR",
        "meta.json",
    ]
    gen.generate(tmp_path / "d", ["FR"], **{**SMALL, "seed": 6})
    assert _files(tmp_path / "d" / "FR")["train.csv"] != _files(tmp_path / "a" / "FR")["train.csv"]


def test_files_follow_the_schema_and_meta_reports_rates(tmp_path):
    metas = gen.generate(tmp_path, ["NL", "ES"], **SMALL)
    schema = DatasetSchema.from_config(synthetic_cfg(tmp_path))
    df = read_csv_checked(tmp_path / "NL" / "train.csv", schema)  # validates too
    assert list(df.columns) == list(COLUMNS) and len(df) == 1500
    assert df[list(NUMERICAL)].to_numpy().min() >= 0 and df[list(NUMERICAL)].to_numpy().max() <= 1
    index = json.loads((tmp_path / "meta.json").read_text())
    assert sorted(index["scenarios"]) == ["ES", "NL"]
    meta = index["scenarios"]["NL"]
    assert meta == metas["NL"]
    assert meta["params"]["seed"] == 5 and meta["rows"] == {"train": 1500, "test": 500}
    assert meta["train"]["ctr"] == pytest.approx(df["click"].mean(), abs=1e-6)
    assert meta["train"]["conversions"] == int(df["conversion"].sum())
    text = (tmp_path / "NL" / "train.csv").read_text().splitlines()[1]
    assert max(len(v.split(".")[1]) for v in text.split(",") if "." in v) <= 6


# ---------------------------------------------------------------- label rates


def test_rates_are_realistic_and_conversion_implies_click(default_scenarios):
    for s, arrays in default_scenarios.items():
        train = arrays.part("train")
        ctr, ctcvr = train["click"].mean(), train["conversion"].mean()
        assert 0.03 <= ctr <= 0.06, (s, ctr)
        assert 0.003 <= ctcvr <= 0.008, (s, ctcvr)
        assert train["conversion"].sum() >= 60, s
        assert np.all(arrays.columns["conversion"] <= arrays.columns["click"])
        assert ctr == pytest.approx(arrays.targets["ctr"], rel=0.2)
        assert ctcvr == pytest.approx(arrays.targets["ctcvr"], rel=0.35)


def test_scenarios_are_shifted(default_scenarios):
    train = {s: a.part("train") for s, a in default_scenarios.items()}
    means = {s: np.array([t[c].mean() for c in NUMERICAL]) for s, t in train.items()}
    zeros = {s: np.array([(t[c] == 0).mean() for c in NUMERICAL]) for s, t in train.items()}
    for a, b in [("NL", "ES"), ("NL", "US"), ("FR", "US")]:
        assert np.mean(np.abs(means[a] - means[b])) > 0.05
        assert np.mean(np.abs(zeros[a] - zeros[b])) > 0.03
    site = {s: set(np.unique(t["categorical_1"])) for s, t in train.items()}
    assert all(len(v) == 1 for v in site.values()) and len(set.union(*site.values())) == 4
    for col in CATEGORICAL[1:4]:
        tops = {s: int(np.bincount(t[col]).argmax()) for s, t in train.items()}
        shares = {s: np.bincount(t[col]).max() / len(t[col]) for s, t in train.items()}
        assert len(set(tops.values())) >= 3, col  # each scenario has its own popular ids
        assert max(shares.values()) > 0.05  # Zipf: a head id takes a visible share
    ids = {s: set(np.unique(t["categorical_2"])) for s, t in train.items()}
    overlap = len(ids["NL"] & ids["ES"]) / len(ids["NL"] | ids["ES"])
    assert 0.05 < overlap < 0.95  # partly overlapping id windows


def test_numerical_signal_is_learnable(default_scenarios):
    """Logistic regression on the numericals alone beats 0.6 test AUC on both tasks."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    arrays = default_scenarios["NL"]
    tr, te = arrays.part("train"), arrays.part("test")
    x_tr = np.column_stack([tr[c] for c in NUMERICAL])
    x_te = np.column_stack([te[c] for c in NUMERICAL])
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)  # scaled: lbfgs converges in a few steps
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    for label in ("click", "conversion"):
        model = LogisticRegression(C=0.01, max_iter=200).fit(x_tr, tr[label])
        auc = roc_auc_score(te[label], model.predict_proba(x_te)[:, 1])
        assert auc > 0.65, (label, auc)


def test_unknown_knob_and_bad_ranges_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="ctr_rate"):
        gen.generate(tmp_path, ["NL"], ctr_rate=0.1)
    with pytest.raises(ValueError, match="ctcvr_range"):
        GeneratorParams(ctr_range=(0.01, 0.02), ctcvr_range=(0.01, 0.03))


# ---------------------------------------------------------------- writing


def test_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write = CsvWriter.write

    def flaky(self, columns):
        calls["n"] += 1
        if calls["n"] == 2:  # the test file's first rows
            raise OSError("disk full")
        real_write(self, columns)

    monkeypatch.setattr(CsvWriter, "write", flaky)
    with pytest.raises(OSError, match="disk full"):
        gen.generate_scenario(tmp_path, "NL", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_regenerate_replaces_the_folder(tmp_path):
    gen.generate_scenario(tmp_path, "NL", **SMALL)
    gen.generate_scenario(tmp_path, "NL", **{**SMALL, "rows_train": 700})
    assert len(pd.read_csv(tmp_path / "NL" / "train.csv")) == 700
    assert sorted(p.name for p in tmp_path.iterdir()) == [".meta.lock", "NL", "meta.json"]


def test_ensure_generated_creates_once_and_checks_params(tmp_path):
    cfg = synthetic_cfg(tmp_path, rows_train=800, rows_test=200)
    ensure_generated(cfg, ["ES"])
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["ES"]
    stamp = (tmp_path / "ES" / "train.csv").stat().st_mtime_ns
    ensure_generated(cfg, ["ES"])
    assert (tmp_path / "ES" / "train.csv").stat().st_mtime_ns == stamp
    with pytest.raises(DataValidationError, match="rows_train") as info:
        ensure_generated(synthetic_cfg(tmp_path, rows_train=900, rows_test=200), ["ES"])
    assert info.value.file == str(tmp_path / "ES" / "meta.json")


_CHILD = (
    "import json, sys\n"
    "from pfms_client.data import ensure_generated\n"
    "ensure_generated(json.loads(sys.argv[1]), [sys.argv[2]])\n"
)


def test_concurrent_ensure_generated_is_safe(tmp_path):
    """Six separate processes (as Flower clients would be), two of them racing for one scenario."""
    cfg = json.dumps(synthetic_cfg(tmp_path / "par", rows_train=600, rows_test=200))
    jobs = SCENARIOS + ["NL", "US"]
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, cfg, s]) for s in jobs]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(jobs)
    gen.generate(tmp_path / "ser", SCENARIOS, rows_train=600, rows_test=200, seed=2024)
    for s in SCENARIOS:
        assert _files(tmp_path / "par" / s) == _files(tmp_path / "ser" / s)
    index = json.loads((tmp_path / "par" / "meta.json").read_text())
    assert sorted(index["scenarios"]) == sorted(SCENARIOS)
    assert not [p for p in (tmp_path / "par").iterdir() if p.name.startswith(".tmp")]


def test_load_scenario_generates_on_demand(tmp_path):
    cfg = synthetic_cfg(tmp_path, rows_train=1000, rows_test=300)
    data = load_scenario(cfg, "US")
    assert (len(data.train), len(data.val), len(data.test)) == (900, 100, 300)
    assert data.field_dims[0] == 2 and data.num_numerical == 63
    assert (tmp_path / "US" / "meta.json").is_file() and not (tmp_path / "NL").exists()


def test_cli(tmp_path, capsys):
    generate_main(
        [
            "--out",
            str(tmp_path),
            "--scenarios",
            "NL",
            "ES",
            "--rows-train",
            "400",
            "--rows-test",
            "100",
            "--seed",
            "3",
            "--set",
            "ctr_range=[0.1, 0.2]",
            "--set",
            "zero_fraction_max=0",
        ]
    )
    out = capsys.readouterr().out
    assert "NL: train 400 rows" in out and "ES:" in out
    meta = json.loads((tmp_path / "NL" / "meta.json").read_text())
    assert meta["params"]["ctr_range"] == [0.1, 0.2] and meta["params"]["seed"] == 3
    assert 0.05 < meta["train"]["ctr"] < 0.3
    with pytest.raises(SystemExit):
        generate_main(["--out", str(tmp_path), "--set", "ctr_range"])
