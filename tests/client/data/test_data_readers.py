"""Readers: the real fixture layouts load as they are; every bad input fails before training."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import CONF_DATASET as CONF, FIXTURES
from pfms_client.data import DataValidationError
from pfms_client.data.readers import (
    SlowPathNeeded,
    iter_checked_chunks,
    read_aliexpress,
    read_csv_checked,
    read_scenario,
    read_tenrec,
)
from pfms_client.data.schema import DatasetSchema

ALI_DIR = FIXTURES / "aliexpress_sample"
TRAIN = "rechub_US_train.csv"


def ali_cfg(
    root: Path = ALI_DIR,
    train_file: str = "rechub_{scenario}_train.csv",
    test_file: str = "rechub_{scenario}_test.csv",
    scenario_dir: str = ".",
) -> dict:
    """The aliexpress.yaml config pointed at files named like the fixture's."""
    node = OmegaConf.create({"seed": 0, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "aliexpress.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg.update(
        root=str(root),
        scenarios=["US"],
        scenario_dir=scenario_dir,
        train_file=train_file,
        test_file=test_file,
    )
    return cfg


def tenrec_cfg(root: Path = FIXTURES / "tenrec") -> dict:
    node = OmegaConf.create({"seed": 0, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "tenrec.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg.update(root=str(root), scenarios=["QK-video", "QB-video"])
    return cfg


ALI_SCHEMA = DatasetSchema.from_config(ali_cfg())


# ---------------------------------------------------------------- good files


def test_aliexpress_sample_loads_as_is():
    train, test = read_aliexpress(ali_cfg(), "US")
    assert train.shape == (100, 82) and test.shape == (20, 82)
    assert (train["click"].sum(), train["conversion"].sum()) == (60, 2)  # as the README states
    assert (test["click"].sum(), test["conversion"].sum()) == (10, 2)
    assert train["categorical_1"].unique().tolist() == [9]  # constant site id of the US file
    assert train["categorical_2"].dtype == np.int64 and train["click"].dtype == np.int8
    assert train["numerical_24"].iloc[0] == pytest.approx(0.116248)
    assert train["numerical_1"].between(0, 1.001).all()


def test_tenrec_fixture_splits_deterministically():
    cfg = tenrec_cfg()
    train, test = read_tenrec(cfg, "QK-video")
    whole = pd.read_csv(FIXTURES / "tenrec" / "QK-video.csv")
    assert (len(train), len(test)) == (48, 12)
    assert list(train.columns) == list(whole.columns)
    merged = pd.concat([train, test]).sort_values(list(whole.columns)).reset_index(drop=True)
    assert merged.equals(
        whole.sort_values(list(whole.columns)).reset_index(drop=True).astype(merged.dtypes)
    )
    assert int(train["click"].sum() + test["click"].sum()) == int(whole["click"].sum())
    again, again_test = read_scenario(cfg, "QK-video")
    assert again.equals(train) and again_test.equals(test)
    cfg["split"]["test_seed"] = 1
    _, other_test = read_tenrec(cfg, "QK-video")
    assert not other_test.equals(test)


def test_max_rows_caps_the_read():
    cfg = ali_cfg()
    cfg["max_rows"] = 30
    train, test = read_aliexpress(cfg, "US")
    assert (len(train), len(test)) == (30, 20)


# ---------------------------------------------------------------- bad files


def _lines() -> list[list[str]]:
    return [line.split(",") for line in (ALI_DIR / TRAIN).read_text().splitlines()]


def _write(tmp_path: Path, rows: list[list[str]], name: str = TRAIN) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return path


def _set(rows: list[list[str]], line: int, column: str, value: str) -> None:
    rows[line - 1][rows[0].index(column)] = value


def _streamed(path: Path, engine: str) -> None:
    """The prepare path (pfms-prepare): chunks of 7 rows, so offsets across chunks count."""
    try:
        list(iter_checked_chunks(path, ALI_SCHEMA, chunk_rows=7, engine=engine))
    except SlowPathNeeded:
        list(iter_checked_chunks(path, ALI_SCHEMA, chunk_rows=7, engine="pandas"))


def _expect(path: Path, column: str | None, line: int | None, words: str) -> DataValidationError:
    for engine in ("arrow", "pandas"):  # the streaming reader: the same error as read_csv_checked
        with pytest.raises(DataValidationError) as info:
            _streamed(path, engine)
        err = info.value
        assert (err.file, err.column, err.line, err.reason) == (str(path), column, line, _reason(path)), engine
    with pytest.raises(DataValidationError) as info:
        read_csv_checked(path, ALI_SCHEMA)
    err = info.value
    assert (err.file, err.column, err.line) == (str(path), column, line)
    text = str(err)
    assert str(path) in text and words in text
    if line is not None:
        assert f"line {line}" in text
    if column is not None:
        assert f"column '{column}'" in text
    return err


def _reason(path: Path) -> str:
    try:
        read_csv_checked(path, ALI_SCHEMA)
    except DataValidationError as exc:
        return exc.reason
    raise AssertionError(f"{path} is valid")


def test_missing_column(tmp_path):
    rows = _lines()
    j = rows[0].index("numerical_7")
    path = _write(tmp_path, [r[:j] + r[j + 1 :] for r in rows])
    _expect(path, "numerical_7", 1, "missing")


def test_extra_column(tmp_path):
    rows = [r + ["0"] for r in _lines()]
    rows[0][-1] = "is_weekend"
    _expect(_write(tmp_path, rows), "is_weekend", 1, "not declared")


def test_duplicate_column(tmp_path):
    rows = [r + [r[1]] for r in _lines()]
    _expect(_write(tmp_path, rows), "categorical_1", 1, "duplicate")


def test_non_numeric_value(tmp_path):
    rows = _lines()
    _set(rows, 17, "numerical_5", "abc")
    _expect(_write(tmp_path, rows), "numerical_5", 17, "non-numeric value 'abc'")


def test_non_numeric_label(tmp_path):
    rows = _lines()
    _set(rows, 40, "click", "yes")
    _expect(_write(tmp_path, rows), "click", 40, "non-numeric")


@pytest.mark.parametrize("value", ["", "NaN", "nan"])
def test_empty_or_nan_cell(tmp_path, value):
    rows = _lines()
    _set(rows, 9, "categorical_3", value)
    _expect(_write(tmp_path, rows), "categorical_3", 9, "empty or NaN")


def test_infinite_numeric(tmp_path):
    rows = _lines()
    _set(rows, 12, "numerical_60", "inf")
    _expect(_write(tmp_path, rows), "numerical_60", 12, "non-finite")


def test_fractional_id(tmp_path):
    rows = _lines()
    _set(rows, 3, "categorical_8", "2.5")
    _expect(_write(tmp_path, rows), "categorical_8", 3, "not an integer")


@pytest.mark.parametrize("column, value, line", [("click", "2", 5), ("conversion", "-1", 30)])
def test_label_outside_0_1(tmp_path, column, value, line):
    rows = _lines()
    _set(rows, line, column, value)
    _expect(_write(tmp_path, rows), column, line, f"label value {value} is not 0 or 1")


def test_conversion_without_click(tmp_path):
    rows = _lines()
    line = next(i + 1 for i, r in enumerate(rows) if i > 0 and r[rows[0].index("click")] == "0")
    _set(rows, line, "conversion", "1")
    _expect(_write(tmp_path, rows), "conversion", line, "conversion=1 without click=1")


def test_first_offending_line_wins(tmp_path):
    rows = _lines()
    _set(rows, 60, "categorical_2", "x")
    _set(rows, 21, "numerical_63", "")
    _set(rows, 21, "numerical_40", "y")  # same line, further left: reported
    _expect(_write(tmp_path, rows), "numerical_40", 21, "non-numeric")


def test_row_with_too_many_fields(tmp_path):
    rows = _lines()
    rows[14].append("7")
    _expect(_write(tmp_path, rows), None, 15, "malformed")


def test_blank_line(tmp_path):
    rows = _lines()
    rows.insert(10, [""])
    err = _expect(_write(tmp_path, rows), "categorical_1", 11, "blank line")
    assert err.reason == "blank line"


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _expect(empty, None, 1, "empty")
    header_only = _write(tmp_path, _lines()[:1], "header.csv")
    _expect(header_only, None, 2, "no data rows")


def test_missing_scenario_folder_and_file(tmp_path):
    with pytest.raises(DataValidationError) as info:
        read_aliexpress(ali_cfg(root=tmp_path, scenario_dir="AliExpress_{scenario}"), "US")
    assert info.value.file == str(tmp_path / "AliExpress_US") and "US" in str(info.value)
    (tmp_path / "AliExpress_US").mkdir()
    with pytest.raises(DataValidationError, match="not found") as info:
        read_aliexpress(ali_cfg(root=tmp_path, scenario_dir="AliExpress_{scenario}"), "US")
    assert info.value.file == str(tmp_path / "AliExpress_US" / "rechub_US_train.csv")
    with pytest.raises(DataValidationError) as info:
        read_tenrec(tenrec_cfg(root=tmp_path), "QB-video")
    assert info.value.file == str(tmp_path / "QB-video.csv")


def test_empty_tenrec_scenario_and_too_small_split(tmp_path):
    header = (FIXTURES / "tenrec" / "QK-video.csv").read_text().splitlines()[:2]
    (tmp_path / "QK-video.csv").write_text(header[0] + "\n")
    with pytest.raises(DataValidationError, match="no data rows") as info:
        read_tenrec(tenrec_cfg(root=tmp_path), "QK-video")
    assert info.value.line == 2
    (tmp_path / "QK-video.csv").write_text("\n".join(header) + "\n")
    with pytest.raises(DataValidationError, match="too few"):
        read_tenrec(tenrec_cfg(root=tmp_path), "QK-video")


def test_tenrec_undeclared_column_is_named(tmp_path):
    df = pd.read_csv(FIXTURES / "tenrec" / "QB-video.csv").assign(read_time=1)
    df.to_csv(tmp_path / "QB-video.csv", index=False)
    with pytest.raises(DataValidationError) as info:
        read_tenrec(tenrec_cfg(root=tmp_path), "QB-video")
    assert (info.value.column, info.value.line) == ("read_time", 1)


def test_unknown_scenario_is_a_config_error():
    with pytest.raises(ValueError, match="DE"):
        read_aliexpress(ali_cfg(), "DE")


def test_validation_stops_a_bad_file_in_a_real_folder(tmp_path):
    """End to end through the dispatcher: a corrupted copy of the fixture folder."""
    shutil.copytree(ALI_DIR, tmp_path / "US")
    rows = _lines()
    _set(rows, 77, "click", "2")
    _write(tmp_path / "US", rows)
    with pytest.raises(DataValidationError) as info:
        read_scenario(ali_cfg(root=tmp_path, scenario_dir="{scenario}"), "US")
    assert (Path(info.value.file).name, info.value.column, info.value.line) == (TRAIN, "click", 77)


def test_error_survives_pickling():
    err = DataValidationError("a/train.csv", "boom", column="click", line=3)
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.column, back.line, str(back)) == (err.file, "click", 3, str(err))
