"""Fast CSV writing for non-negative integers and fixed-decimal floats, block by block.

``DataFrame.to_csv`` spends ~2.5 s on 25k x 82 cells because it formats every
float in Python. Here a ``CsvWriter`` appends blocks of columns to one open file:
each block becomes a pyarrow table (integers as they are; floats as strings,
rendered by numpy: for values in [0, 1] with at most ``_TABLE_MAX_DECIMALS``
decimals a lookup in a table of every possible string, else digit arithmetic)
and ``pyarrow.csv.write_csv`` writes it without quotes. The bytes are those of
the plain rules below whatever the block sizes: integers in decimal, floats
rounded to ``decimals`` places with trailing zeros dropped ("0", "0.25", "1").
Memory is bounded by ``_CHUNK_ROWS`` rows of text, not by the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from os import PathLike
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

_ZERO = ord("0")
_CHUNK_ROWS = 50_000  # rows rendered to text at once: bounds the text buffers (~50k x row width)
_TABLE_MAX_DECIMALS = 6  # floats in [0, 1] are looked up in a table of 10^d + 1 strings up to here
_WRITE_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="none")


def _digit_count(v: np.ndarray) -> np.ndarray:
    count = np.ones(v.shape, dtype=np.int64)
    p = 10
    vmax = int(v.max()) if v.size else 0
    while p <= vmax:
        count += v >= p
        p *= 10
    return count


def format_uint(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Render non-negative ints as left-aligned ASCII rows ``(chars[n, W], lengths[n])``."""
    v = np.asarray(values, dtype=np.int64)
    if v.size and v.min() < 0:
        raise ValueError("format_uint: negative value")
    length = _digit_count(v)
    width = int(length.max()) if v.size else 1
    power = length[:, None] - 1 - np.arange(width)[None, :]
    digits = (v[:, None] // 10 ** np.maximum(power, 0)) % 10
    return (digits + _ZERO).astype(np.uint8), length


def format_fixed(values: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """Render non-negative floats rounded to ``decimals`` places, trailing zeros dropped ("0", "0.25")."""
    x = np.asarray(values, dtype=np.float64)
    _check_fixed(x)
    return _format_scaled(np.rint(x * 10**decimals).astype(np.int64), decimals)


def _check_fixed(x: np.ndarray) -> None:
    if x.size and not (np.isfinite(x).all() and x.min() >= 0):
        raise ValueError("format_fixed: values must be finite and >= 0")


def _format_scaled(k: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """``k / 10^decimals`` as text, from the scaled integers ``k``."""
    scale = 10**decimals
    int_chars, int_len = format_uint(k // scale)
    frac = k % scale
    trailing = np.zeros(k.shape, dtype=np.int64)
    for t in range(1, decimals + 1):
        trailing += frac % 10**t == 0
    n_frac = decimals - trailing
    n = k.shape[0]
    width = int_chars.shape[1] + 1 + decimals
    chars = np.full((n, width), _ZERO, dtype=np.uint8)
    chars[:, : int_chars.shape[1]] = int_chars
    rows = np.arange(n)
    chars[rows, int_len] = ord(".")
    j = np.arange(decimals)
    frac_digits = (frac[:, None] // 10 ** (decimals - 1 - j)[None, :]) % 10
    chars[rows[:, None], int_len[:, None] + 1 + j[None, :]] = frac_digits + _ZERO
    length = int_len + np.where(n_frac > 0, 1 + n_frac, 0)
    return chars, length


def _string_array(chars: np.ndarray, length: np.ndarray) -> pa.Array:
    """A pyarrow string array of the left-aligned rows of ``chars`` cut at ``length``."""
    data = chars[np.arange(chars.shape[1])[None, :] < length[:, None]]
    offsets = np.zeros(len(length) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    return pa.LargeStringArray.from_buffers(
        len(length), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))
    )


@lru_cache(maxsize=4)
def _unit_table(decimals: int) -> pa.Array:
    """Every string of k / 10^decimals for k in 0..10^decimals (all fixed floats in [0, 1])."""
    return _string_array(*_format_scaled(np.arange(10**decimals + 1, dtype=np.int64), decimals))


def _fixed_column(values: np.ndarray, decimals: int) -> pa.Array:
    x = np.asarray(values, dtype=np.float64)
    _check_fixed(x)
    k = np.rint(x * 10**decimals).astype(np.int64)
    if decimals <= _TABLE_MAX_DECIMALS and (not k.size or k.max() <= 10**decimals):
        return pc.take(_unit_table(decimals), pa.array(k))
    return _string_array(*_format_scaled(k, decimals))


def _int_column(values: np.ndarray) -> pa.Array:
    v = np.asarray(values, dtype=np.int64)
    if v.size and v.min() < 0:
        raise ValueError("format_uint: negative value")
    return pa.array(v)


class CsvWriter:
    """Append blocks of columns (ints where ``decimals`` is None, else fixed floats) to ``fh``.

    The header is written on creation; ``write`` may be called any number of times
    and the file is the same as one ``write`` of all rows.
    """

    def __init__(
        self, fh: BinaryIO, header: Sequence[str], decimals: Sequence[int | None]
    ) -> None:
        if len(header) != len(decimals):
            raise ValueError("write_csv: header and decimals differ in length")
        self._fh = fh
        self._names = [f"c{i}" for i in range(len(header))]  # not written: the header is ours
        self._decimals = list(decimals)
        self.rows = 0
        fh.write((",".join(header) + "\n").encode())

    def write(self, columns: Sequence[np.ndarray]) -> None:
        if len(columns) != len(self._decimals):
            raise ValueError("write_csv: header, columns and decimals differ in length")
        n = len(columns[0]) if columns else 0
        for start in range(0, n, _CHUNK_ROWS):
            stop = min(n, start + _CHUNK_ROWS)
            arrays = [
                _int_column(c[start:stop]) if d is None else _fixed_column(c[start:stop], d)
                for c, d in zip(columns, self._decimals, strict=True)
            ]
            pa_csv.write_csv(pa.Table.from_arrays(arrays, self._names), self._fh, _WRITE_OPTIONS)
        self.rows += n


def write_csv(
    path: str | PathLike[str],
    header: Sequence[str],
    columns: Sequence[np.ndarray],
    decimals: Sequence[int | None],
) -> None:
    """Write columns (ints where ``decimals`` is None, else fixed floats) under ``header``."""
    if not (len(header) == len(columns) == len(decimals)):
        raise ValueError("write_csv: header, columns and decimals differ in length")
    with open(path, "wb") as fh:
        CsvWriter(fh, header, decimals).write(columns)
