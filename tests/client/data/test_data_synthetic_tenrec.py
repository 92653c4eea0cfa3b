"""Synthetic Tenrec-schema data: determinism, schema, constraints, rates, shared signal."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import CONF_DATASET as CONF, FIXTURES
from pfms_client.data import DataValidationError, ensure_generated, load_scenario
from pfms_client.data.readers import read_csv_checked
from pfms_client.data.settings import DatasetSettings
from pfms_client.data.synthetic.params import TenrecGeneratorParams
from pfms_client.data.synthetic.tenrec import (
    COLUMNS,
    TenrecArrays,
    generate_tenrec,
    simulate_tenrec_scenario,
)

SCENARIOS = ["QK-video", "QB-video", "QK-article", "QB-article"]
SMALL = {"rows": 1200, "seed": 5}


def tenrec_synth_cfg(root: Path, **generator_updates) -> dict:
    node = OmegaConf.create({"seed": 0, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "synthetic_tenrec.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg["root"] = str(root)
    cfg["generator"].update(generator_updates)
    return cfg


def _bytes(folder: Path, scenario: str) -> tuple[bytes, bytes]:
    return (folder / f"{scenario}.csv").read_bytes(), (folder / f"{scenario}.meta.json").read_bytes()


@pytest.fixture(scope="module")
def default_scenarios() -> dict[str, TenrecArrays]:
    """All four scenarios at the default size (30k rows each), in memory (~0.3 s)."""
    params = TenrecGeneratorParams()
    return {s: simulate_tenrec_scenario(s, params) for s in SCENARIOS}


# ---------------------------------------------------------------- determinism and files


def test_same_seed_same_bytes_and_one_scenario_alone_equals_full_run(tmp_path):
    generate_tenrec(tmp_path / "a", SCENARIOS, **SMALL)
    generate_tenrec(tmp_path / "b", SCENARIOS, **SMALL)
    generate_tenrec(tmp_path / "c", ["QK-article"], **SMALL)
    for s in SCENARIOS:
        assert _bytes(tmp_path / "a", s) == _bytes(tmp_path / "b", s)
    assert _bytes(tmp_path / "c", "QK-article") == _bytes(tmp_path / "a", "QK-article")
    generate_tenrec(tmp_path / "d", ["QK-article"], **{**SMALL, "seed": 6})
    assert _bytes(tmp_path / "d", "QK-article")[0] != _bytes(tmp_path / "a", "QK-article")[0]
    assert _bytes(tmp_path / "a", "QK-video")[0] != _bytes(tmp_path / "a", "QB-video")[0]


def test_files_follow_the_tenrec_schema_and_meta_reports_rates(tmp_path):
    metas = generate_tenrec(tmp_path, ["QB-video"], **SMALL)
    settings = DatasetSettings.from_config(tenrec_synth_cfg(tmp_path))
    df = read_csv_checked(tmp_path / "QB-video.csv", settings.schema)  # validates constraints too
    assert list(df.columns) == list(COLUMNS) and len(df) == 1200
    real_layout = (FIXTURES / "tenrec" / "QK-video.csv").open().readline()
    assert ",".join(COLUMNS) == real_layout.strip()
    meta = json.loads((tmp_path / "QB-video.meta.json").read_text())
    index = json.loads((tmp_path / "meta.json").read_text())
    assert meta == metas["QB-video"] == index["scenarios"]["QB-video"]
    assert meta["params"]["seed"] == 5 and meta["rows"] == 1200
    assert meta["rates"]["click"] == pytest.approx(df["click"].mean(), abs=1e-6)
    clicked = df[df["click"] == 1]
    assert meta["rates"]["like_given_click"] == pytest.approx(clicked["like"].mean(), abs=1e-6)
    assert (df["watching_times"] > 0).equals(df["click"] == 1)


# ---------------------------------------------------------------- labels


def test_like_share_follow_only_on_clicks(default_scenarios):
    for arrays in default_scenarios.values():
        c = arrays.columns
        for label in ("like", "share", "follow"):
            assert np.all(c[label] <= c["click"]), label
        assert c["like"].sum() >= 300  # enough positives for the like task


def test_rates_hit_targets_and_differ_by_scenario(default_scenarios):
    click, like_given_click = {}, {}
    for s, arrays in default_scenarios.items():
        c = arrays.columns
        click[s] = c["click"].mean()
        like_given_click[s] = c["like"][c["click"] == 1].mean()
        assert 0.15 <= click[s] <= 0.35
        assert click[s] == pytest.approx(arrays.targets["click"], rel=0.05)
        assert like_given_click[s] == pytest.approx(arrays.targets["like_given_click"], rel=0.15)
    assert max(click.values()) - min(click.values()) > 0.04
    assert max(like_given_click.values()) - min(like_given_click.values()) > 0.02


def _one_hot_lr(train: dict, tests: list[dict], cols: list[str], label: str) -> list[float]:
    """Test AUCs of a logistic regression on one-hot ``cols`` plus a gender x age x category cross."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    def x(c: dict) -> np.ndarray:
        cross = (c["gender"] * 100 + c["age"]) * 1000 + c["video_category"]
        return np.column_stack([c[k] for k in cols] + [cross])

    enc = OneHotEncoder(handle_unknown="ignore").fit(x(train))
    model = LogisticRegression(C=0.3, max_iter=300).fit(enc.transform(x(train)), train[label])
    return [roc_auc_score(t[label], model.predict_proba(enc.transform(x(t)))[:, 1]) for t in tests]


def test_signal_is_learnable_within_a_scenario(default_scenarios):
    arrays = default_scenarios["QK-video"]
    n_train = 24_000
    train = {k: v[:n_train] for k, v in arrays.columns.items()}
    test = {k: v[n_train:] for k, v in arrays.columns.items()}
    all_fields = ["user_id", "item_id", "video_category", "gender", "age"]
    for label in ("click", "like"):
        oracle = _auc(arrays.columns[label], arrays.probabilities[label])
        assert oracle > 0.75, (label, oracle)
        (auc,) = _one_hot_lr(train, [test], all_fields, label)
        assert 0.6 < auc < oracle, (label, auc)


def test_other_scenarios_teach_part_of_the_signal(default_scenarios):
    """Fields with a shared meaning carry over to other scenarios, but not all of the signal."""
    shared_fields = ["video_category", "gender", "age"]
    cols = {s: a.columns for s, a in default_scenarios.items()}
    n_train = 24_000
    own_train = {k: v[:n_train] for k, v in cols["QK-video"].items()}
    own_test = {k: v[n_train:] for k, v in cols["QK-video"].items()}
    others = [cols[s] for s in SCENARIOS[1:]]
    for label in ("click", "like"):
        own, *transfer = _one_hot_lr(own_train, [own_test, *others], shared_fields, label)
        assert np.mean(transfer) > 0.55, (label, transfer)
        assert own > np.mean(transfer) + 0.03, (label, own, transfer)


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


# ---------------------------------------------------------------- config and on-demand path


def test_yaml_generator_matches_code_defaults():
    node = tenrec_synth_cfg(Path("/unused"))["generator"]
    assert set(node) == TenrecGeneratorParams.knob_names()
    assert TenrecGeneratorParams.from_dict(copy.deepcopy(node)) == TenrecGeneratorParams()


def test_generator_knobs_are_checked_per_layout(tmp_path):
    cfg = tenrec_synth_cfg(tmp_path)
    cfg["generator"]["ctr_range"] = [0.1, 0.2]  # an aliexpress knob
    with pytest.raises(ValueError, match="ctr_range"):
        DatasetSettings.from_config(cfg)
    with pytest.raises(ValueError, match="like_rate_range"):
        TenrecGeneratorParams(like_rate_range=(0.2, 0.1))


def test_ensure_generated_creates_once_and_checks_params(tmp_path):
    cfg = tenrec_synth_cfg(tmp_path, rows=500)
    ensure_generated(cfg, ["QK-video"])
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["QK-video.csv"]
    stamp = (tmp_path / "QK-video.csv").stat().st_mtime_ns
    ensure_generated(cfg, ["QK-video"])
    assert (tmp_path / "QK-video.csv").stat().st_mtime_ns == stamp
    with pytest.raises(DataValidationError, match="rows: 500 on disk vs 600 configured") as info:
        ensure_generated(tenrec_synth_cfg(tmp_path, rows=600), ["QK-video"])
    assert info.value.file == str(tmp_path / "QK-video.meta.json")
    (tmp_path / "QB-video.csv").write_text("user_id\n1\n")
    with pytest.raises(DataValidationError, match="not made by this code"):
        ensure_generated(cfg, ["QB-video"])


def test_load_scenario_generates_on_demand(tmp_path):
    cfg = tenrec_synth_cfg(tmp_path, rows=1000)
    data = load_scenario(cfg, "QK-article")
    assert (len(data.train), len(data.val), len(data.test)) == (720, 80, 200)
    assert data.task_names == ["click", "like"] and data.num_numerical == 0
    assert data.categorical_names == ["user_id", "item_id", "video_category", "gender", "age"]
    assert data.train.x_cat.shape == (720, 5) and data.train.y.shape == (720, 2)
    assert bool((data.train.y[:, 1] <= data.train.y[:, 0]).all())  # like implies click
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["QK-article.csv"]
