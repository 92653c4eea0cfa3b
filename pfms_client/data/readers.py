"""Read one scenario's CSV files and reject bad data before any training.

All checks are vectorised per column; the first offending row is located with
numpy, so validating millions of rows costs about as much as parsing them.
Line numbers assume one record per physical line (true for every layout we
read): data row ``i`` (0-based) is line ``i + 2`` because the header is line 1.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
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


# ---------------------------------------------------------------- streaming, in chunks
# What `pfms-prepare` reads: the same checks and messages as read_csv_checked, one
# chunk at a time, so memory is bounded by the chunk, not the file.

CHUNK_ROWS = 65_536  # rows per validated chunk (about 40 MB of AliExpress-schema values)
# pyarrow's CSV block: the unit it parses in. Small blocks stay in the CPU caches: on the
# 2-core box, 1 MiB blocks parsed a 580-byte-row file in 1.4 CPU-s per 300k rows against
# 5.6-7.4 CPU-s with 16 MiB blocks (and 1.5-2.0 with 256 KiB-4 MiB).
_ARROW_BLOCK_BYTES = 1 << 20
_SEGMENT_BYTES = 4 << 20  # a file is cut into segments this big, parsed in parallel


@dataclass(frozen=True)
class Chunk:
    """Validated rows ``first_row .. first_row + len - 1`` (0-based data rows) of one file."""

    cat: np.ndarray  # int64 [n, F] raw ids, schema.categorical order (may be column-major)
    num: np.ndarray  # float32 [n, Dn], schema.numerical order (parsed as float64, then rounded)
    labels: np.ndarray  # int8 [n, L], schema.labels order

    first_row: int
    extra: Any = None  # what the caller's ``annotate`` made of the chunk

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int, annotate: Annotate | None) -> Chunk:
        """The first ``n`` rows (``annotate`` is run again on them)."""
        part = replace(self, cat=self.cat[:n], num=self.num[:n], labels=self.labels[:n], extra=None)
        return replace(part, extra=annotate(part)) if annotate is not None else part


# Runs on every chunk before it is yielded, in the parsing threads where there are some
# (the caller's per-chunk work, such as hashing ids, then uses every core).
Annotate = Callable[[Chunk], Any]


class SlowPathNeeded(Exception):
    """pyarrow refused a file that today's (pandas) rules accept, e.g. an id written ``3.0``:
    the caller restarts the file with ``engine='pandas'`` (same results, slower)."""


def iter_checked_chunks(
    path: str | PathLike[str],
    schema: DatasetSchema,
    *,
    max_rows: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    engine: str = "arrow",
    annotate: Annotate | None = None,
) -> Iterator[Chunk]:
    """Validated chunks of a CSV (or ``.parquet``) file in file order.

    Raises the DataValidationError read_csv_checked raises for the same file (file,
    line, column and reason), and one for bytes that are not UTF-8. ``engine='arrow'``
    cuts the file into segments that parsing threads turn into checked chunks (parse,
    whole-column numpy tests, ``annotate``), so a caller's own work overlaps with them;
    a chunk is then one segment's rows, and ``chunk_rows`` applies to the other
    engines. On anything pyarrow refuses or a check fails, the file is read again with
    pandas in chunks to find today's exact message; if pandas accepts the file,
    SlowPathNeeded asks the caller to restart with ``engine='pandas'``.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, expected a CSV file" if path.is_dir() else "file not found"
        raise DataValidationError(path, what)
    if path.suffix == ".parquet":
        yield from _annotated(_parquet_chunks(path, schema, max_rows, chunk_rows), annotate)
        return
    header = _read_header_checked(path)
    _check_header(path, header, schema)
    if engine == "pandas":
        yield from _annotated(_pandas_chunks(path, header, schema, max_rows, chunk_rows), annotate)
        return
    try:
        yield from _arrow_chunks(path, header, schema, max_rows, annotate)
    except _ArrowRefused:
        for _ in _pandas_chunks(path, header, schema, max_rows, chunk_rows):
            pass  # raises today's message for a bad file
        raise SlowPathNeeded(str(path)) from None


def _annotated(chunks: Iterator[Chunk], annotate: Annotate | None) -> Iterator[Chunk]:
    for chunk in chunks:
        yield replace(chunk, extra=annotate(chunk)) if annotate is not None else chunk


class _ArrowRefused(Exception):
    pass


def _read_header_checked(path: Path) -> list[str]:
    try:
        return _read_header(path)
    except UnicodeDecodeError as exc:
        raise _undecodable(path) from exc


def _segments(buf: Any, start: int, size: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` byte ranges of about ``size`` bytes, each ending after a newline."""
    n = buf.size
    while start < n:
        end = min(n, start + size)
        while end < n:
            probe = buf.slice(end, min(1 << 16, n - end)).to_pybytes()
            nl = probe.find(b"\n")
            if nl >= 0:
                end += nl + 1
                break
            end += len(probe)
        yield start, end
        start = end


def _parsed_chunks(path: Path, header: list[str], schema: DatasetSchema, options: dict[str, Any],
                   annotate: Annotate | None) -> Iterator[Chunk | None]:
    """Each segment's checked chunk (None for a segment without rows) in file order,
    made by PARSE_THREADS threads; ``first_row`` is left 0 for the caller to set.

    The file is memory-mapped and cut at newlines into ``_SEGMENT_BYTES`` segments after
    the header line; each is parsed, converted, checked and annotated on its own
    (pyarrow and numpy's copies release the GIL), at most ``2 * PARSE_THREADS`` segments
    ahead of the consumer. A cut inside a quoted field cannot pass unnoticed: the
    halves fail to parse and the file goes to pandas.
    """
    import pyarrow as pa
    from concurrent.futures import ThreadPoolExecutor
    from pyarrow import csv as pacsv

    mapped = pa.memory_map(str(path))
    buf = mapped.read_buffer()
    with path.open("rb") as fh:
        first = len(fh.readline())  # the header line, newline included
    read = pacsv.ReadOptions(column_names=header, block_size=_ARROW_BLOCK_BYTES, use_threads=False)

    def work(span: tuple[int, int]) -> Chunk | None:
        batches = [b for b in pacsv.read_csv(pa.BufferReader(buf.slice(span[0], span[1] - span[0])),
                                             read_options=read, **options).to_batches() if b.num_rows]
        if not batches:
            return None
        chunk = _arrow_to_chunk(batches, schema, 0)
        return replace(chunk, extra=annotate(chunk)) if annotate is not None else chunk

    threads = parse_threads()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="pfms-csv-parse")
    try:
        ahead: list[Any] = []
        for span in _segments(buf, first, _SEGMENT_BYTES):
            ahead.append(pool.submit(work, span))
            if len(ahead) > 2 * threads:
                yield ahead.pop(0).result()
        for future in ahead:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        mapped.close()


def parse_threads() -> int:
    """Threads parsing CSV segments: ``PFMS_PARSE_THREADS``, else the usable CPUs (at most 4)."""
    import os

    env = os.environ.get("PFMS_PARSE_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _arrow_chunks(
    path: Path, header: list[str], schema: DatasetSchema, max_rows: int | None, annotate: Annotate | None
) -> Iterator[Chunk]:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    types = {c: pa.int64() for c in schema.categorical}
    types.update({c: pa.float64() for c in schema.numerical})
    types.update({c: pa.int64() for c in schema.labels})
    wanted = [*schema.categorical, *schema.numerical, *schema.labels]
    options = {"parse_options": pacsv.ParseOptions(ignore_empty_lines=False),
               "convert_options": pacsv.ConvertOptions(column_types=types, include_columns=wanted)}
    row = 0
    try:
        for chunk in _parsed_chunks(path, header, schema, options, annotate):
            if chunk is None:
                continue
            if max_rows is not None and row + len(chunk) > max_rows:
                chunk = chunk.head(max_rows - row, annotate)
            if len(chunk):
                yield replace(chunk, first_row=row)
                row += len(chunk)
            if max_rows is not None and row >= max_rows:
                break
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _ArrowRefused() from exc
    if row == 0:
        raise DataValidationError(path, "no data rows (empty scenario file)", line=_FIRST_DATA_LINE)


def _arrow_to_chunk(batches: list[Any], schema: DatasetSchema, first_row: int) -> Chunk:
    """Parsed record batches -> arrays, checked with whole-column tests; anything today's
    checks reject sends the file to pandas for the exact message.

    Numericals are written row-major one record batch (~1 MiB of text) at a time, so the
    transposition stays in the CPU caches; ids and labels are kept column-major."""
    n = sum(b.num_rows for b in batches)
    names = batches[0].schema.names
    cat_cols = [names.index(c) for c in schema.categorical]
    num_cols = [names.index(c) for c in schema.numerical]
    lab_cols = [names.index(c) for c in schema.labels]
    cat = np.empty((len(cat_cols), n), dtype=np.int64)
    num = np.empty((n, len(num_cols)), dtype=np.float32)  # float64 -> float32 on assignment
    labels64 = np.empty((len(lab_cols), n), dtype=np.int64)
    a = 0
    for batch in batches:
        b = a + batch.num_rows
        cols = batch.columns
        if any(col.null_count for col in cols):  # empty cell or blank line
            raise _ArrowRefused()
        for j, c in enumerate(cat_cols):
            cat[j, a:b] = cols[c].to_numpy(zero_copy_only=False)
        block = num[a:b]
        for j, c in enumerate(num_cols):
            block[:, j] = cols[c].to_numpy(zero_copy_only=False)
        for j, c in enumerate(lab_cols):
            labels64[j, a:b] = cols[c].to_numpy(zero_copy_only=False)
        a = b
    # a non-finite float32 means a non-finite value or one too big for float32: pandas decides
    if not np.isfinite(num).all():
        raise _ArrowRefused()
    if (labels64 >> 1).any():  # anything but 0 and 1 (negatives shift to -1)
        raise _ArrowRefused()
    labels = labels64.T.astype(np.int8)
    index = {c: j for j, c in enumerate(schema.labels)}
    for con in schema.constraints:
        if (labels[:, index[con.label]] > labels[:, index[con.requires]]).any():
            raise _ArrowRefused()
    return Chunk(cat=cat.T, num=num, labels=labels, first_row=first_row)


def _pandas_chunks(
    path: Path, header: list[str], schema: DatasetSchema, max_rows: int | None, chunk_rows: int
) -> Iterator[Chunk]:
    """Today's reader (read_csv_checked's checks and messages), one chunk at a time."""
    row = 0
    try:
        frames = pd.read_csv(
            path, skip_blank_lines=False, low_memory=False, nrows=max_rows, encoding="utf-8-sig",
            chunksize=chunk_rows,
        )
        for df in _parsed(path, frames):
            df.index = pd.RangeIndex(row, row + len(df))
            _check_cells_from(path, df, header, schema, row)
            df = _cast(df, schema)
            _check_constraints_from(path, df, schema, row)
            yield Chunk(
                cat=df[list(schema.categorical)].to_numpy(dtype=np.int64),
                num=df[list(schema.numerical)].to_numpy(dtype=np.float64).astype(np.float32),
                labels=df[list(schema.labels)].to_numpy(dtype=np.int8),
                first_row=row,
            )
            row += len(df)
    except UnicodeDecodeError as exc:
        raise _undecodable(path) from exc
    if row == 0:
        raise DataValidationError(path, "no data rows (empty scenario file)", line=_FIRST_DATA_LINE)


def _parsed(path: Path, frames: Any) -> Iterator[pd.DataFrame]:
    while True:
        try:
            df = next(frames)
        except StopIteration:
            return
        except pd.errors.ParserError as exc:
            match = re.search(r"line (\d+)", str(exc))
            line = int(match.group(1)) if match else None
            raise DataValidationError(path, f"malformed CSV row: {exc}", line=line) from exc
        yield df


def _check_cells_from(path: Path, df: pd.DataFrame, header: list[str], schema: DatasetSchema, row0: int) -> None:
    try:
        _check_cells(path, df.reset_index(drop=True), header, schema)
    except DataValidationError as exc:
        raise DataValidationError(path, exc.reason, column=exc.column, line=(exc.line or 0) + row0) from None


def _check_constraints_from(path: Path, df: pd.DataFrame, schema: DatasetSchema, row0: int) -> None:
    try:
        _check_constraints(path, df, schema)
    except DataValidationError as exc:
        raise DataValidationError(path, exc.reason, column=exc.column, line=(exc.line or 0) + row0) from None


def _undecodable(path: Path) -> DataValidationError:
    """Name the first line (and column) holding bytes that are not UTF-8, reading line by line."""
    header: list[str] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = header[raw[: exc.start].count(b",")] if raw[: exc.start].count(b",") < len(header) else None
                bad = raw[exc.start : exc.end]
                return DataValidationError(
                    path, f"undecodable bytes {bad!r} (the file must be UTF-8 text)",
                    column=column if number > 1 else None, line=number,
                )
            if number == 1:
                header = next(csv.reader([text]), [])
    return DataValidationError(path, "undecodable bytes (the file must be UTF-8 text)")


def _parquet_chunks(path: Path, schema: DatasetSchema, max_rows: int | None, chunk_rows: int) -> Iterator[Chunk]:
    """A Parquet file: the same header and cell checks; 'line' is the data row + 1 (no header line)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(path, f"not a readable Parquet file: {exc}") from exc
    _check_header(path, list(pf.schema_arrow.names), schema)
    wanted = [*schema.categorical, *schema.numerical, *schema.labels]
    header = list(pf.schema_arrow.names)
    row = 0
    for batch in pf.iter_batches(batch_size=chunk_rows, columns=wanted):
        if max_rows is not None and row >= max_rows:
            break
        df = batch.to_pandas()
        if max_rows is not None:
            df = df.iloc[: max_rows - row]
        # the CSV checks count a header line: line = row + 2; Parquet rows are 1-based lines
        _check_cells_from(path, df.reset_index(drop=True), header, schema, row - 1)
        df = _cast(df, schema)
        _check_constraints_from(path, df.reset_index(drop=True), schema, row - 1)
        yield Chunk(
            cat=df[list(schema.categorical)].to_numpy(dtype=np.int64),
            num=df[list(schema.numerical)].to_numpy(dtype=np.float64).astype(np.float32),
            labels=df[list(schema.labels)].to_numpy(dtype=np.int8),
            first_row=row,
        )
        row += len(df)
    if row == 0:
        raise DataValidationError(path, "no data rows (empty scenario file)", line=1)
