"""Read RecBole's data files (RecBole calls them "atomic files": ``.inter``, ``.user``,
``.item``): tab-separated, a typed header (``user_id:token``), no quoting.

Only the columns asked for are returned, as strings exactly as written, so
each caller decides what a valid cell is; a missing file or column, a
malformed header or a row with the wrong number of fields raises
DataValidationError naming the file, column and line.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataValidationError

_HEADER_LINE = 1
FIRST_DATA_LINE = 2
_SEP = "\t"
_TYPE_SEP = ":"


def read_recbole_file(path: Path, columns: Sequence[str], missing_hint: str = "") -> pd.DataFrame:
    """The ``columns`` of one RecBole file as strings; ``missing_hint`` ends a not-found message."""
    if not path.is_file():
        hint = f"; {missing_hint}" if missing_hint else ""
        raise DataValidationError(path, f"file not found{hint}")
    names = _header_names(path)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataValidationError(
            path,
            f"column missing from the header (has {names})",
            column=missing[0],
            line=_HEADER_LINE,
        )
    _check_field_counts(path, len(names))
    df = pd.read_csv(
        path,
        sep=_SEP,
        header=0,
        names=names,
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
        encoding="utf-8",
    )
    if len(df) == 0:
        raise DataValidationError(path, "no data rows", line=FIRST_DATA_LINE)
    return df[list(columns)]


def fail_at_first(bad: np.ndarray, path: Path, column: str, reason: Callable[[int], str]) -> None:
    """Raise DataValidationError at the first row where ``bad`` holds, with its file line."""
    if bad.any():
        row = int(np.argmax(bad))
        raise DataValidationError(path, reason(row), column=column, line=row + FIRST_DATA_LINE)


def int_column(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """Integer cells (``"196"``, ``"3.0"``) as int64; anything else is an error with its line."""
    values = number_column(df, column, path)
    fail_at_first(values != np.floor(values), path, column, lambda row: f"{df[column].iloc[row]!r} is not an integer")
    return values.astype(np.int64)


def number_column(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """Finite numeric cells as float64; an empty or non-numeric cell is an error with its line."""
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    fail_at_first(~np.isfinite(values), path, column, lambda row: f"{df[column].iloc[row]!r} is not a finite number")
    return values


def _check_field_counts(path: Path, expected: int) -> None:
    """Every line has the header's number of fields (pandas would pad a short row with '')."""
    with path.open(encoding="utf-8", newline="") as fh:
        for number, line in enumerate(fh, start=_HEADER_LINE):
            found = line.rstrip("\r\n").count(_SEP) + 1
            if found != expected:
                raise DataValidationError(
                    path, f"row has {found} tab-separated fields, the header {expected}", line=number
                )


def _header_names(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        first = fh.readline().rstrip("\r\n")
    if not first:
        raise DataValidationError(path, "file is empty (no header line)", line=_HEADER_LINE)
    names = []
    for field in first.split(_SEP):
        name, sep, kind = field.partition(_TYPE_SEP)
        if not sep or not name or not kind:
            raise DataValidationError(
                path,
                f"header field {field!r} is not 'name:type' (not a RecBole atomic file?)",
                line=_HEADER_LINE,
            )
        names.append(name)
    if len(set(names)) != len(names):
        raise DataValidationError(
            path, f"duplicate column names in header {names}", line=_HEADER_LINE
        )
    return names
