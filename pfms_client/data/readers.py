"""Read one scenario's CSV files and reject bad data before any training.

All checks are vectorised per column; the first offending row is located with
numpy, so validating millions of rows costs about as much as parsing them.
Line numbers assume one record per physical line (true for every layout we
read): data row ``i`` (0-based) is line ``i + 2`` because the header is line 1.
"""

from __future__ import annotations

import csv
import re
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from .errors import DataValidationError
from .schema import DatasetSchema
from .settings import DatasetSettings

_HEADER_LINE = 1
_FIRST_DATA_LINE = 2
_SHOWN_VALUE_CHARS = 30  # long garbage values are cut in messages


def read_csv_checked(
    path: str | PathLike[str],
    schema: DatasetSchema,
    *,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Parse ``path`` and validate it against ``schema``.

    Returns a frame with every file column; categorical ids as int64, labels
    as int8, numerical features as float64. Raises DataValidationError for a
    missing file, empty file, missing/extra/duplicate columns, non-numeric,
    empty or non-finite cells, non-integer ids, labels outside {0, 1} and
    violated label constraints.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, expected a CSV file" if path.is_dir() else "file not found"
        raise DataValidationError(path, what)
    header = _read_header(path)
    _check_header(path, header, schema)
    df = _parse(path, max_rows)
    if len(df) == 0:
        raise DataValidationError(path, "no data rows (empty scenario file)", line=_FIRST_DATA_LINE)
    _check_cells(path, df, header, schema)
    df = _cast(df, schema)
    _check_constraints(path, df, schema)
    return df


def read_aliexpress(cfg: Any, scenario: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MTReclib layout: ``{root}/{scenario_dir}/{train_file|test_file}``, split given by the files."""
    settings = _settings(cfg)
    settings.check_scenario(scenario)
    folder = settings.scenario_path(scenario)
    if not folder.is_dir():
        raise DataValidationError(folder, f"scenario folder for {scenario!r} not found")
    kwargs = {"max_rows": settings.max_rows}
    train = read_csv_checked(settings.train_path(scenario), settings.schema, **kwargs)
    test = read_csv_checked(settings.test_path(scenario), settings.schema, **kwargs)
    return train, test


def read_tenrec(cfg: Any, scenario: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tenrec layout: one ``{root}/{scenario_file}`` per scenario, test rows drawn by a fixed seed."""
    settings = _settings(cfg)
    settings.check_scenario(scenario)
    path = settings.scenario_path(scenario)
    if not path.is_file():
        raise DataValidationError(path, f"scenario file for {scenario!r} not found")
    df = read_csv_checked(path, settings.schema, max_rows=settings.max_rows)
    assert settings.split.test_fraction is not None and settings.split.test_seed is not None
    return split_rows(df, settings.split.test_fraction, settings.split.test_seed, path)


def read_scenario(cfg: Any, scenario: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``(train, test)`` frames of one scenario with the reader of ``dataset.layout``."""
    settings = _settings(cfg)
    readers = {"aliexpress": read_aliexpress, "tenrec": read_tenrec}
    return readers[settings.layout](settings, scenario)


def split_rows(
    df: pd.DataFrame, fraction: float, seed: int, source: str | PathLike[str] = "<frame>"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded random split into ``(rest, held_out)``; both keep the file's row order."""
    n = len(df)
    n_held = int(round(n * fraction))
    if n_held == 0 or n_held == n:
        raise DataValidationError(
            source, f"{n} rows are too few to hold out a fraction of {fraction}"
        )
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_held]] = True
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def _settings(cfg: Any) -> DatasetSettings:
    return cfg if isinstance(cfg, DatasetSettings) else DatasetSettings.from_config(cfg)


def _read_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    if not header or header == [""]:
        raise DataValidationError(path, "file is empty (no header line)", line=_HEADER_LINE)
    return header


def _check_header(path: Path, header: list[str], schema: DatasetSchema) -> None:
    seen: set[str] = set()
    for col in header:
        if col in seen:
            raise DataValidationError(
                path, "duplicate column in header", column=col, line=_HEADER_LINE
            )
        seen.add(col)
    missing = [c for c in schema.columns if c not in seen]
    if missing:
        more = f" (also missing: {missing[1:]})" if len(missing) > 1 else ""
        raise DataValidationError(
            path,
            f"declared column is missing from the header{more}",
            column=missing[0],
            line=_HEADER_LINE,
        )
    declared = set(schema.columns)
    extra = [c for c in header if c not in declared]
    if extra:
        more = f" (also undeclared: {extra[1:]})" if len(extra) > 1 else ""
        raise DataValidationError(
            path,
            "column is not declared in the schema; declare it as a feature or label, "
            f"or list it in schema.id_columns / schema.ignore_columns{more}",
            column=extra[0],
            line=_HEADER_LINE,
        )


def _parse(path: Path, max_rows: int | None) -> pd.DataFrame:
    try:
        # skip_blank_lines=False keeps row i on line i + 2 (a blank line becomes an all-NaN row).
        return pd.read_csv(
            path, skip_blank_lines=False, low_memory=False, nrows=max_rows, encoding="utf-8-sig"
        )
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise DataValidationError(path, f"malformed CSV row: {exc}", line=line) from exc


def _check_cells(path: Path, df: pd.DataFrame, header: list[str], schema: DatasetSchema) -> None:
    """Report the earliest bad cell over all checked columns (ties: leftmost column)."""
    kinds = {c: "categorical" for c in schema.categorical}
    kinds.update({c: "numerical" for c in schema.numerical})
    kinds.update({c: "label" for c in schema.labels})
    worst: tuple[int, str, str] | None = None
    for col in header:
        if col not in kinds:
            continue
        found = _first_bad_cell(df[col], kinds[col])
        if found is not None and (worst is None or found[0] < worst[0]):
            worst = (found[0], col, found[1])
    if worst is not None:
        row, col, reason = worst
        if df.iloc[row].isna().all():
            reason = "blank line"
        raise DataValidationError(path, reason, column=col, line=row + _FIRST_DATA_LINE)


def _first_bad_cell(series: pd.Series, kind: str) -> tuple[int, str] | None:
    """(row, reason) of the first invalid cell of one column, or None."""
    if is_bool_dtype(series.dtype):
        return 0, f"non-numeric value {_show(series.iloc[0])}"
    if not is_numeric_dtype(series.dtype):
        null = series.isna().to_numpy()
        text = pd.to_numeric(series, errors="coerce").isna().to_numpy() & ~null
        row = _first(null | text)
        if row is not None:
            return row, (
                "empty or NaN cell" if null[row] else f"non-numeric value {_show(series.iloc[row])}"
            )
        series = pd.to_numeric(series)
    values = series.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    if kind == "categorical":
        bad = ~finite | (values != np.floor(values))
    elif kind == "label":
        bad = ~finite | ((values != 0) & (values != 1))
    else:
        bad = ~finite
    row = _first(bad)
    if row is None:
        return None
    v = values[row]
    if np.isnan(v):
        return row, "empty or NaN cell"
    if not np.isfinite(v):
        return row, f"non-finite value {v}"
    if kind == "categorical":
        return row, f"categorical id {v:g} is not an integer"
    return row, f"label value {v:g} is not 0 or 1"


def _cast(df: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    for col in schema.categorical:
        df[col] = pd.to_numeric(df[col]).astype(np.int64)
    for col in schema.numerical:
        df[col] = pd.to_numeric(df[col]).astype(np.float64)
    for col in schema.labels:
        df[col] = pd.to_numeric(df[col]).astype(np.int8)
    return df


def _check_constraints(path: Path, df: pd.DataFrame, schema: DatasetSchema) -> None:
    for con in schema.constraints:
        bad = (df[con.label].to_numpy() == 1) & (df[con.requires].to_numpy() != 1)
        row = _first(bad)
        if row is not None:
            raise DataValidationError(
                path,
                f"{con.label}=1 without {con.requires}=1",
                column=con.label,
                line=row + _FIRST_DATA_LINE,
            )


def _first(mask: np.ndarray) -> int | None:
    idx = int(np.argmax(mask)) if mask.size else 0
    return idx if mask.size and mask[idx] else None


def _show(value: Any) -> str:
    text = str(value)
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[:_SHOWN_VALUE_CHARS] + "..."
    return repr(text)
