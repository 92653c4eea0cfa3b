"""Per-scenario sizes of both synthetic generators (rows_train_by_scenario, rows_by_scenario).

The default data must stay the bytes they were before the knob existed (checksums
taken from the generator before the change), and a scenario of N rows must be the
same bytes whether N is its own count or everyone's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pfms_client.config import ConfigError, load_config
from pfms_client.config_check import check_dataset
from pfms_client.data import DataValidationError, ensure_generated
from pfms_client.data.synthetic import aliexpress as gen
from pfms_client.data.synthetic.cli import main as generate_main
from pfms_client.data.synthetic.params import GeneratorParams, TenrecGeneratorParams
from pfms_client.data.synthetic.tenrec import generate_tenrec

from test_data_generator import synthetic_cfg
from test_data_synthetic_tenrec import tenrec_synth_cfg

SMALL = {"rows_train": 1500, "rows_test": 500, "seed": 5}
# sha256 of FR (AliExpress schema, SMALL) and QB-article (Tenrec schema, 2,000 rows, seed 5)
# as the generator wrote them before per-scenario sizes existed (commit cc7e999).
BEFORE = {
    "FR/meta.json": "e91aaf1ca5bf80dc660f85bb73e612300e0fefc93ced265a3c3baf703fdbd6b0",
    "FR/test.csv": "e70cd52e3ef0f9af70da455d582534fa4d68b5e5ae975c15ce95b8d614a738e0",
    "FR/train.csv": "1a8d79fb9a74612ea541fcc9b52776f78421d496ef06749fd5ce96682c7d4acf",
    "QB-article.csv": "8433bf6ba514509fd1b6d8a89938108e41324b5c03c9332a1e61f7ec9a9ce775",
    "QB-article.meta.json": "1b4ec86298ee3439db4a385199a7b6a3384d595c22470aa97e822583fcc54a16",
}


def _digests(root: Path, names) -> dict[str, str]:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


# ---------------------------------------------------------------- same bytes


def test_default_data_are_the_bytes_of_before_and_the_explicit_map_changes_nothing(tmp_path):
    ali = [n for n in BEFORE if n.startswith("FR/")]
    ten = [n for n in BEFORE if n.startswith("QB-article")]
    gen.generate_scenario(tmp_path / "default", "FR", **SMALL)
    generate_tenrec(tmp_path / "default", ["QB-article"], rows=2000, seed=5)
    assert _digests(tmp_path / "default", BEFORE) == BEFORE
    # The same counts spelled per scenario (FR's own 1,500; another scenario named too).
    gen.generate(tmp_path / "map", ["FR", "US"], **{**SMALL, "rows_train": 999},
                 rows_train_by_scenario={"FR": 1500, "US": 400})
    generate_tenrec(tmp_path / "map", ["QB-article"], rows=7, seed=5, rows_by_scenario={"QB-article": 2000})
    assert _digests(tmp_path / "map", ali + ten) == {n: BEFORE[n] for n in ali + ten}


def test_a_scenario_of_n_rows_is_the_same_from_the_map_or_the_single_count(tmp_path):
    gen.generate(tmp_path / "map", ["US"], **SMALL, rows_train_by_scenario={"US": 700})
    gen.generate_scenario(tmp_path / "one", "US", **{**SMALL, "rows_train": 700})
    names = ["US/train.csv", "US/test.csv", "US/meta.json"]
    assert _digests(tmp_path / "map", names) == _digests(tmp_path / "one", names)


# ---------------------------------------------------------------- counts honoured


def test_each_scenario_gets_its_own_train_rows_and_the_shared_test_rows(tmp_path):
    metas = gen.generate(tmp_path, ["NL", "ES", "FR"], rows_train=300, rows_test=100, seed=5,
                         rows_train_by_scenario={"NL": 900, "ES": 450})
    for scenario, train in (("NL", 900), ("ES", 450), ("FR", 300)):
        assert _lines(tmp_path / scenario / "train.csv") == train + 1  # + header
        assert _lines(tmp_path / scenario / "test.csv") == 100 + 1
        assert metas[scenario]["rows"] == {"train": train, "test": 100}
        # meta.json records the scenario's own knobs: its count, no map
        assert metas[scenario]["params"]["rows_train"] == train
        assert "rows_train_by_scenario" not in metas[scenario]["params"]


def test_tenrec_scenarios_get_their_own_rows(tmp_path):
    metas = generate_tenrec(tmp_path, ["QK-video", "QB-video"], rows=300, seed=5,
                            rows_by_scenario={"QK-video": 800})
    assert _lines(tmp_path / "QK-video.csv") == 801 and _lines(tmp_path / "QB-video.csv") == 301
    assert metas["QK-video"]["rows"] == 800 and metas["QK-video"]["params"]["rows"] == 800


def test_ensure_generated_uses_and_checks_each_scenarios_own_count(tmp_path):
    cfg = synthetic_cfg(tmp_path, rows_train=300, rows_test=100, rows_train_by_scenario={"ES": 600})
    ensure_generated(cfg, ["ES", "US"])
    assert _lines(tmp_path / "ES" / "train.csv") == 601 and _lines(tmp_path / "US" / "train.csv") == 301
    ensure_generated(cfg, ["ES", "US"])  # existing folders match their own counts
    with pytest.raises(DataValidationError, match="rows_train: 600 on disk vs 500 configured"):
        ensure_generated(synthetic_cfg(tmp_path, rows_train=300, rows_test=100,
                                       rows_train_by_scenario={"ES": 500}), ["ES"])
    tcfg = tenrec_synth_cfg(tmp_path / "t", rows=300, rows_by_scenario={"QB-video": 500})
    ensure_generated(tcfg, ["QB-video"])
    ensure_generated(tcfg, ["QB-video"])
    assert _lines(tmp_path / "t" / "QB-video.csv") == 501


# ---------------------------------------------------------------- bad counts


@pytest.mark.parametrize("counts, message", [
    ({"XX": 10}, r"generator.rows_train_by_scenario: unknown scenario\(s\) \['XX'\]"),
    ({"NL": 0}, r"generator.rows_train_by_scenario.NL=0: expected a row count"),
    ({"NL": -5}, r"generator.rows_train_by_scenario.NL=-5: expected a row count"),
    ({"NL": 2.5}, r"generator.rows_train_by_scenario.NL=2.5: expected a row count"),
    ({"NL": True}, r"generator.rows_train_by_scenario.NL=True: expected a row count"),
    ({"NL": "100"}, r"generator.rows_train_by_scenario.NL='100': expected a row count"),
    ([100, 200], r"generator.rows_train_by_scenario=\[100, 200\]: expected a mapping"),
])
def test_bad_per_scenario_counts_are_one_error_naming_the_key(tmp_path, counts, message):
    with pytest.raises(ValueError, match=message):
        gen.generate(tmp_path, ["NL", "ES"], **SMALL, rows_train_by_scenario=counts)
    cfg = synthetic_cfg(tmp_path, rows_train_by_scenario=counts)
    with pytest.raises(ConfigError, match="^dataset." + message):
        check_dataset(cfg)
    assert not list(tmp_path.iterdir())  # nothing written


def test_tenrec_counts_are_checked_and_each_layout_has_its_own_knob():
    with pytest.raises(ValueError, match=r"rows_by_scenario: unknown scenario\(s\) \['NL'\]"):
        TenrecGeneratorParams.from_dict({"rows_by_scenario": {"NL": 5}}, scenarios=["QK-video"])
    with pytest.raises(ConfigError, match="rows_by_scenario"):
        check_dataset(synthetic_cfg(Path("/unused"), rows_by_scenario={"NL": 5}))
    with pytest.raises(ConfigError, match="rows_train_by_scenario"):
        check_dataset(tenrec_synth_cfg(Path("/unused"), rows_train_by_scenario={"QK-video": 5}))


def test_for_scenario_and_to_dict():
    params = GeneratorParams.from_dict({"rows_train": 10, "rows_train_by_scenario": {"NL": 99}})
    assert params.for_scenario("NL") == GeneratorParams(rows_train=99)
    assert params.for_scenario("ES") == GeneratorParams(rows_train=10)
    assert params.for_scenario("NL").for_scenario("ES") == GeneratorParams(rows_train=99)  # idempotent
    assert params.to_dict()["rows_train_by_scenario"] == {"NL": 99}
    assert "rows_train_by_scenario" not in GeneratorParams().to_dict()
    assert hash(params) == hash(GeneratorParams.from_dict(params.to_dict()))


def test_cli_rows_train_by_scenario(tmp_path, capsys):
    generate_main(["--out", str(tmp_path), "--scenarios", "NL", "ES", "--rows-train", "200",
                   "--rows-test", "50", "--rows-train-by-scenario", "NL=600"])
    out = capsys.readouterr().out
    assert "NL: train 600 rows" in out and "ES: train 200 rows" in out
    with pytest.raises(SystemExit):
        generate_main(["--out", str(tmp_path / "x"), "--scenarios", "NL", "--rows-train-by-scenario", "US=5"])
    assert "unknown scenario(s) ['US']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- the skewed data set


def test_synthetic_skew_config(tmp_path):
    cfg = load_config(["dataset=synthetic_skew", f"paths.home={tmp_path}"])
    default = load_config(["dataset=synthetic", f"paths.home={tmp_path}"])
    counts = dict(cfg.dataset.generator.rows_train_by_scenario)
    assert "skew" in cfg.dataset.name and set(counts) == set(cfg.dataset.scenarios)
    assert max(counts.values()) / min(counts.values()) >= 20
    assert cfg.dataset.generator.rows_test == 10_000  # ~50 CTCVR positives per test split
    assert all(str(n) in cfg.dataset.root for n in counts.values()) and cfg.dataset.root != default.dataset.root
    # Otherwise the same generator and data set as synthetic.yaml.
    for key in set(default.dataset) - {"name", "root", "generator"}:
        assert cfg.dataset[key] == default.dataset[key], key
    for key in set(default.dataset.generator) - {"rows_train_by_scenario"}:
        assert cfg.dataset.generator[key] == default.dataset.generator[key], key
    other = load_config(["dataset=synthetic_skew", f"paths.home={tmp_path}",
                         "dataset.generator.rows_train_by_scenario.US=6000"])
    assert other.dataset.root != cfg.dataset.root
