"""The prepared store: a scenario's rows validated once, as typed columns on disk.

``prepare_scenario`` reads a scenario's source files (CSV or Parquet) in one
streaming pass of validated chunks (readers.iter_checked_chunks) and writes, per
source file, ``rows/<source>/x_cat.npy`` (int32 indices after the vocabulary fitted
on the train part, 0 = out of vocabulary), ``rows/<source>/x_num.npy`` (float32,
scaled as ``numeric_transform`` says) and ``rows/<source>/y.npy`` (uint8 task
labels), all rows in file order; a split that is part of a file (train and val
carved from train.csv, or every split of a one-file layout) is
``splits/<split>.npy``, its sorted row numbers; ``vocab/<field>.npy`` is a field's
vocabulary (kept raw ids, sorted: ``encode_ids`` maps new rows the same way). ``manifest.json`` holds the format
version, the settings that shape the encoding, a fingerprint of every source file,
row counts, vocabulary sizes and label rates. ``open_store`` maps the arrays
(``np.load(mmap_mode='r')``): opening costs milliseconds and no memory grows with
the row count.

How it is built, and why it equals the in-memory encoding (tensors.py) exactly:
pass 1 gives each raw id of a field a provisional index in order of first
appearance (memory: the field's distinct ids) and writes provisional indices,
float32 numericals and task labels to the final files (parsing, checking, hashing
ids and task labels run in the parsing threads; the order-dependent index table in
the caller); then the split is drawn exactly as ``validation_indices`` (and, for
one-file layouts, ``split_rows``) draw it; the ids counted on the train part
(min_count) get their final index in sorted raw-id order (CategoricalVocab's order);
pass 2 rewrites x_cat in place with the final indices (4 bytes per id: the
numericals, most of the bytes, are written once). ``standardize`` takes mean and
std of the float32-rounded train values and rewrites x_num in place (the in-memory
path uses float64 inputs: the scaled values then differ by about 1e-7 relative;
``none``, the default, is exact). Splits kept as row numbers rather than copies
spare a second write of every row (benchmarks/bench_data.py measures the rate).

A store is rebuilt when a source file, the schema or an encoding setting changes.
It is built in a temporary folder beside its place, every file synced, and renamed
into it, so a crash leaves the old store or none; an exclusive ``fcntl.flock`` on a
lock file beside it makes a second process preparing the same scenario wait, then
reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .encoding import OOV_INDEX, validation_indices
from .errors import DataValidationError
from .readers import SlowPathNeeded, iter_checked_chunks
from .settings import DatasetSettings

FORMAT_VERSION = 3
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
ROWS_DIR = "rows"  # rows/<source>/{x_cat,x_num,y}.npy: every row of a source file, in file order
SPLITS_DIR = "splits"  # splits/<split>.npy: a split's sorted row numbers in its source
VOCAB_DIR = "vocab"  # vocab/<field>.npy: the kept raw ids, sorted; id vocab[i] has index i + 1, any other 0
FINGERPRINT_BYTES = 1 << 16  # hashed from the head and the tail of every source file
GATHER_ROWS = 262_144  # rows per step of the passes over the written arrays
SYNC_BYTES = 64 << 20  # a file being written is flushed to disk in the background every this many bytes

# progress(phase, rows_done, rows_expected or None)
Progress = Callable[[str, int, "int | None"], None]


# ---------------------------------------------------------------- where a store lives
def store_root(settings: DatasetSettings) -> Path:
    """``dataset.store_dir``, else ``$PFMS_HOME/prepared`` (``~/.pfms/prepared``)."""
    if settings.store_dir is not None:
        return Path(settings.store_dir)
    from ..config import pfms_home  # lazily: importing the store needs no Hydra

    return pfms_home() / "prepared"


def sources(settings: DatasetSettings, scenario: str) -> dict[str, Path]:
    """The scenario's source files by role: ``train``/``test`` files, or one ``all`` file."""
    if settings.layout == "aliexpress":
        folder = settings.scenario_path(scenario)
        if not folder.is_dir():
            raise DataValidationError(folder, f"scenario folder for {scenario!r} not found")
        return {"train": settings.train_path(scenario), "test": settings.test_path(scenario)}
    path = settings.scenario_path(scenario)
    if not path.is_file():
        raise DataValidationError(path, f"scenario file for {scenario!r} not found")
    return {"all": path}


def schema_record(schema: Any) -> dict[str, Any]:
    """A schema as plain JSON: part of a store's settings and of a checkpoint's encoding."""
    return {
        "categorical": list(schema.categorical),
        "numerical": list(schema.numerical),
        "labels": list(schema.labels),
        "tasks": [[t.name, list(t.all_of)] for t in schema.tasks],
        "constraints": [[c.label, c.requires] for c in schema.constraints],
        "id_columns": list(schema.id_columns),
        "ignore_columns": list(schema.ignore_columns),
    }


def encoding_settings(settings: DatasetSettings, scenario: str) -> dict[str, Any]:
    """Everything that changes the prepared arrays (a change means a rebuild)."""
    schema = settings.schema
    return {
        "format": FORMAT_VERSION,
        "scenario": scenario,
        "layout": settings.layout,
        "sources": {k: str(p.resolve()) for k, p in sources(settings, scenario).items()},
        **schema_record(schema),
        "min_count": settings.min_count,
        "numeric_transform": settings.numeric_transform,
        "val_fraction": settings.split.val_fraction,
        "split_seed": settings.split.seed,
        "test_fraction": settings.split.test_fraction,
        "test_seed": settings.split.test_seed,
        "max_rows": settings.max_rows,
    }


def store_path(settings: DatasetSettings, scenario: str) -> Path:
    """One folder per scenario and encoding: other seeds or settings get their own store."""
    key = hashlib.blake2b(json.dumps(encoding_settings(settings, scenario), sort_keys=True).encode(),
                          digest_size=6).hexdigest()
    return store_root(settings) / settings.name / f"{scenario}-{key}"


def fingerprint(path: Path) -> dict[str, Any]:
    """Size, mtime (ns) and a blake2b of the first and last 64 KiB: cheap, and any
    rewrite, truncation or append changes it."""
    st = path.stat()
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
        if st.st_size > FINGERPRINT_BYTES:
            fh.seek(max(FINGERPRINT_BYTES, st.st_size - FINGERPRINT_BYTES))
            h.update(fh.read(FINGERPRINT_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_tail_blake2b": h.hexdigest()}


# ---------------------------------------------------------------- prepare
def prepare_scenario(settings: DatasetSettings, scenario: str, progress: Progress | None = None) -> Path:
    """The scenario's up-to-date store (built now if missing or stale); safe to call
    from several processes at once."""
    settings.check_scenario(scenario)
    final = store_path(settings, scenario)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.with_name(final.name + ".lock")):
        wanted = encoding_settings(settings, scenario)
        if is_current(final, wanted, settings, scenario):
            return final
        for stale in final.parent.glob(f".{final.name}.*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            _build(tmp, settings, scenario, wanted, progress)
            _publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def is_current(folder: Path, wanted: dict[str, Any], settings: DatasetSettings, scenario: str) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("format") != FORMAT_VERSION or manifest.get("settings") != wanted:
        return False
    current = {k: fingerprint(p) for k, p in sources(settings, scenario).items()}
    return manifest.get("sources") == current


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; an old store is moved aside first and
    removed after (processes that mapped it keep their open files)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def factorized(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct ids in order of first appearance) of one column of raw ids."""
    import pandas as pd

    codes, uniq = pd.factorize(col, sort=False)
    return codes, np.asarray(uniq, dtype=np.int64)


class _IdTable:
    """Raw ids of one field -> provisional indices in order of first appearance.

    A chunk's ids are factorized (hash), then looked up by binary search in two sorted
    levels: ``main`` and a small ``recent`` one that takes new ids (an insert costs
    O(recent), not O(vocabulary)) and is merged into ``main`` when it exceeds an eighth
    of it, so a field with millions of ids costs O(ids log ids) over the whole file.
    """

    MERGE_MIN = 4096

    def __init__(self) -> None:
        empty = np.zeros(0, dtype=np.int64)
        self.main_ids, self.main_prov, self.new_ids, self.new_prov = empty, empty, empty, empty
        self.raw_by_prov: list[np.ndarray] = []
        self.count = 0

    def snapshot(self) -> tuple[Any, ...]:
        return self.main_ids, self.main_prov, self.new_ids, self.new_prov, list(self.raw_by_prov), self.count

    def restore(self, saved: tuple[Any, ...]) -> None:
        self.main_ids, self.main_prov, self.new_ids, self.new_prov, raw, self.count = saved
        self.raw_by_prov = list(raw)

    def index(self, col: np.ndarray) -> np.ndarray:
        return self.lookup(*factorized(col))

    def lookup(self, codes: np.ndarray, uniq: np.ndarray) -> np.ndarray:
        """Provisional indices of a column given as ``factorized`` made it."""
        prov = np.empty(len(uniq), dtype=np.int64)
        missing = np.arange(len(uniq))
        for ids, where in ((self.main_ids, self.main_prov), (self.new_ids, self.new_prov)):
            if len(ids) and len(missing):
                keys = uniq[missing]
                pos = np.minimum(np.searchsorted(ids, keys), len(ids) - 1)
                hit = ids[pos] == keys
                prov[missing[hit]] = where[pos[hit]]
                missing = missing[~hit]
        if len(missing):
            new = uniq[missing]
            new_prov = np.arange(self.count, self.count + len(new), dtype=np.int64)
            prov[missing] = new_prov
            self.raw_by_prov.append(new)
            self.count += len(new)
            order = np.argsort(new)
            at = np.searchsorted(self.new_ids, new[order])
            self.new_ids = np.insert(self.new_ids, at, new[order])
            self.new_prov = np.insert(self.new_prov, at, new_prov[order])
            if len(self.new_ids) > max(self.MERGE_MIN, len(self.main_ids) // 8):
                ids = np.concatenate([self.main_ids, self.new_ids])
                order = np.argsort(ids)
                self.main_ids = ids[order]
                self.main_prov = np.concatenate([self.main_prov, self.new_prov])[order]
                self.new_ids = self.new_prov = np.zeros(0, dtype=np.int64)
        return prov.astype(np.int32)[codes]

    def raw_ids(self) -> np.ndarray:
        return np.concatenate(self.raw_by_prov) if self.raw_by_prov else np.zeros(0, dtype=np.int64)


def _expected_rows(path: Path, max_rows: int | None) -> int | None:
    """Rows estimated from the first MiB's lines (for the progress line's ETA only)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(1 << 20)
    except OSError:
        return None
    lines = head.count(b"\n")
    if path.suffix == ".parquet" or lines < 2:
        return max_rows
    est = int(size / (len(head) / lines)) - 1
    return min(est, max_rows) if max_rows is not None else est


def task_label_matrix(labels: np.ndarray, schema: Any) -> np.ndarray:
    """uint8 [n, T] from the label columns [n, L]: task t is 1 where every label it needs is 1
    (what the store holds as y, and what pfms-score compares its probabilities with)."""
    col = {c: j for j, c in enumerate(schema.labels)}
    tasks = np.empty((labels.shape[0], schema.num_tasks), dtype=np.uint8)
    for t, task in enumerate(schema.tasks):
        tasks[:, t] = np.logical_and.reduce([labels[:, col[c]] == 1 for c in task.all_of])
    return tasks


def _annotator(schema: Any) -> Callable[[Any], Any]:
    """The per-chunk work that needs no shared state, done in the parsing threads: each
    field's ids factorized, and the task labels."""
    def annotate(chunk: Any) -> Any:
        return [factorized(chunk.cat[:, f]) for f in range(chunk.cat.shape[1])], task_label_matrix(chunk.labels, schema)
    return annotate


def _read_source(path: Path, folder: Path, settings: DatasetSettings, tables: list[_IdTable],
                 progress: Progress | None) -> int:
    """Pass 1 over one file: ``folder/{x_cat,x_num,y}.npy`` (x_cat in provisional indices);
    a file pyarrow refuses but pandas accepts is read again with pandas. Returns its rows."""
    schema = settings.schema
    expected = _expected_rows(path, settings.max_rows)
    annotate = _annotator(schema)
    folder.mkdir(parents=True, exist_ok=True)
    for engine in ("arrow", "pandas"):
        saved = [t.snapshot() for t in tables]
        x_cat = _NpyWriter(folder / "x_cat.npy", np.int32, len(schema.categorical))
        x_num = _NpyWriter(folder / "x_num.npy", np.float32, len(schema.numerical))
        y = _NpyWriter(folder / "y.npy", np.uint8, schema.num_tasks)
        try:
            for chunk in iter_checked_chunks(path, schema, max_rows=settings.max_rows, engine=engine,
                                             annotate=annotate):
                ids, tasks = chunk.extra
                prov = np.empty((len(tables), len(chunk)), dtype=np.int32)  # column-major
                for f, (table, (codes, uniq)) in enumerate(zip(tables, ids, strict=True)):
                    prov[f] = table.lookup(codes, uniq)
                x_cat.write(prov.T)
                x_num.write(chunk.num)
                y.write(tasks)
                if progress is not None:
                    progress(f"read {path.name}", y.rows, expected)
            for writer in (x_cat, x_num, y):
                writer.finish()
            return y.rows
        except SlowPathNeeded:
            for t, state in zip(tables, saved, strict=True):
                t.restore(state)
        finally:
            for writer in (x_cat, x_num, y):
                writer.close()
    raise AssertionError("unreachable: the pandas engine never asks for a slower path")


def _split_rows(settings: DatasetSettings, counts: dict[str, int],
                paths: dict[str, Path]) -> dict[str, tuple[str, np.ndarray | None]]:
    """Each split as (source role, sorted row indices or None = every row): the same draws
    as readers.split_rows and tensors.validation_indices."""
    split = settings.split
    if "all" in counts:  # one file: seeded test rows first, then val off the rest
        n = counts["all"]
        assert split.test_fraction is not None and split.test_seed is not None
        n_held = int(round(n * split.test_fraction))
        if n_held == 0 or n_held == n:
            raise DataValidationError(paths["all"], f"{n} rows are too few to hold out a fraction of "
                                                    f"{split.test_fraction}")
        held = np.zeros(n, dtype=bool)
        held[np.random.default_rng(split.test_seed).permutation(n)[:n_held]] = True
        rest = np.flatnonzero(~held)
        t_idx, v_idx = validation_indices(len(rest), split.val_fraction, split.seed)
        return {"train": ("all", rest[t_idx]), "val": ("all", rest[v_idx]), "test": ("all", np.flatnonzero(held))}
    t_idx, v_idx = validation_indices(counts["train"], split.val_fraction, split.seed)
    return {"train": ("train", t_idx), "val": ("train", v_idx), "test": ("test", None)}


def _blocks(n: int, rows: np.ndarray | None) -> Iterator[tuple[int, int, np.ndarray | slice]]:
    """``(a, b, sel)`` over ``[0, n)`` in GATHER_ROWS steps: ``sel`` picks, within rows
    ``a..b-1``, those of the sorted index ``rows`` (every row when None)."""
    for a in range(0, n, GATHER_ROWS):
        b = min(n, a + GATHER_ROWS)
        if rows is None:
            yield a, b, slice(None)
        else:
            lo, hi = np.searchsorted(rows, [a, b])
            yield a, b, rows[lo:hi] - a


def _build(tmp: Path, settings: DatasetSettings, scenario: str, wanted: dict[str, Any],
           progress: Progress | None) -> None:
    t0 = time.perf_counter()
    schema = settings.schema
    paths = sources(settings, scenario)
    tables = [_IdTable() for _ in schema.categorical]
    counts = {role: _read_source(path, tmp / ROWS_DIR / role, settings, tables, progress)
              for role, path in paths.items()}
    splits = _split_rows(settings, counts, paths)
    arrays = {role: _source_arrays(tmp, role) for role in paths}

    # vocabularies: ids counted on the train part, final index in sorted raw-id order
    role, rows = splits["train"]
    seen = [np.zeros(t.count, dtype=np.int64) for t in tables]
    for a, b, sel in _blocks(counts[role], rows):
        prov = np.asarray(arrays[role][0][a:b])[sel]
        for f in range(len(tables)):
            seen[f] += np.bincount(prov[:, f], minlength=tables[f].count)
    remaps, field_dims = [], []
    (tmp / VOCAB_DIR).mkdir()
    for f, table in enumerate(tables):
        kept = np.flatnonzero(seen[f] >= settings.min_count)
        raw = table.raw_ids()
        order = kept[np.argsort(raw[kept], kind="stable")]
        remap = np.full(table.count, OOV_INDEX, dtype=np.int32)
        remap[order] = np.arange(1, len(order) + 1, dtype=np.int32)
        remaps.append(remap)
        field_dims.append(len(order) + 1)
        np.save(tmp / VOCAB_DIR / f"{schema.categorical[f]}.npy", raw[order])  # sorted: index = position + 1
    mean, std = _scaler(settings.numeric_transform, arrays[role][1], rows, counts[role])
    del arrays

    # pass 2, in place: provisional -> final indices (one gather for every field), scaling
    offsets = np.cumsum([0] + [len(r) for r in remaps[:-1]]).astype(np.int64)
    flat_remap = np.concatenate(remaps) if remaps else np.zeros(0, dtype=np.int32)
    done, total = 0, sum(counts.values())
    for role in paths:
        folder = tmp / ROWS_DIR / role
        for rows_done in _rewrite(folder / "x_cat.npy", lambda block: flat_remap[block + offsets]):
            if progress is not None:
                progress("index ids", done + rows_done, total)
        if mean is not None:
            for _ in _rewrite(folder / "x_num.npy",
                              lambda block: ((block.astype(np.float64) - mean) / std).astype(np.float32)):
                pass
        done += counts[role]

    (tmp / SPLITS_DIR).mkdir()
    split_info, rates = {}, {}
    for name, (role, rows) in splits.items():
        if rows is not None:
            np.save(tmp / SPLITS_DIR / f"{name}.npy", rows.astype(np.int64))
        n = len(rows) if rows is not None else counts[role]
        y = _load(tmp / ROWS_DIR / role / "y.npy")
        positives = np.zeros(schema.num_tasks, dtype=np.int64)
        for a, b, sel in _blocks(counts[role], rows):
            positives += np.asarray(y[a:b])[sel].sum(axis=0, dtype=np.int64)
        del y
        split_info[name] = {"source": role, "rows": n, "index": rows is not None}
        rates[name] = {t.name: (float(positives[i]) / n if n else 0.0) for i, t in enumerate(schema.tasks)}
    _sync_tree(tmp)
    manifest = {
        "format": FORMAT_VERSION,
        "settings": wanted,
        "sources": {k: fingerprint(p) for k, p in paths.items()},
        "rows": {name: info["rows"] for name, info in split_info.items()},
        "splits": split_info,
        "source_rows": counts,
        "field_dims": field_dims,
        "task_names": schema.task_names,
        "label_rates": rates,
        "numeric_scaler": None if mean is None else {"mean": mean.tolist(), "std": std.tolist()},
        "prepare_seconds": round(time.perf_counter() - t0, 3),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _source_arrays(folder: Path, role: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    where = folder / ROWS_DIR / role
    return _load(where / "x_cat.npy"), _load(where / "x_num.npy"), _load(where / "y.npy")


class _NpyWriter:
    """A .npy file written front to back in row blocks (plain writes: no page faults of a
    writable mapping) whose row count is known only at the end: the header's space is
    reserved first and written by ``finish`` (numpy's header leaves room for any count).

    Every SYNC_BYTES written, a background thread flushes the file (fdatasync), so the
    disk writes overlap the parsing instead of all waiting for the final fsync."""

    def __init__(self, path: Path, dtype: Any, width: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.dtype, self.width, self.rows = np.dtype(dtype), width, 0
        self.path = path
        self.fh = open(path, "wb")
        self.fh.write(self._header(0))
        self._unsynced = 0
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="pfms-store-sync")
        self._pending: list[Any] = []

    def _header(self, rows: int) -> bytes:
        import io

        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (rows, self.width)})
        return buf.getvalue()

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        assert block.ndim == 2 and block.shape[1] == self.width, (block.shape, self.width)
        self.fh.write(block.data)
        self.rows += block.shape[0]
        self._unsynced += block.nbytes
        if self._unsynced >= SYNC_BYTES:
            self.fh.flush()
            self._pending = [f for f in self._pending if not f.done()]
            if not self._pending:  # one flush at a time: never queue behind a slow disk
                self._pending.append(self._syncer.submit(os.fdatasync, self.fh.fileno()))
            self._unsynced = 0

    def finish(self) -> None:
        header = self._header(self.rows)
        if len(header) != len(self._header(0)):
            raise AssertionError(f"{self.path}: the .npy header for {self.rows} rows outgrew its space")
        self.fh.seek(0)
        self.fh.write(header)
        self.close()

    def close(self) -> None:
        self._syncer.shutdown(wait=True)  # no flush may outlive the file descriptor
        self.fh.close()


def _rewrite(path: Path, fn: Callable[[np.ndarray], np.ndarray]) -> Iterator[int]:
    """Apply ``fn`` to a 2-D .npy file in place, GATHER_ROWS rows at a time (plain reads
    and writes); yields the rows done after each step."""
    with open(path, "r+b") as fh:
        version = np.lib.format.read_magic(fh)
        assert version == (1, 0), (path, version)
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        start = fh.tell()
        n, width = shape
        buf = np.empty((min(n, GATHER_ROWS), width), dtype=dtype)
        for a in range(0, n, GATHER_ROWS):
            b = min(n, a + GATHER_ROWS)
            block = buf[: b - a]
            fh.seek(start + a * width * dtype.itemsize)
            fh.readinto(block.data)
            fh.seek(start + a * width * dtype.itemsize)
            fh.write(np.ascontiguousarray(fn(block), dtype=dtype).data)
            yield b


def _sync_tree(folder: Path) -> None:
    """Every file of the new store on disk before it is renamed into place."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _load(path: Path) -> np.ndarray:
    """Mapped read-only; an empty array (nothing to map) is read."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        return np.load(path)


def _scaler(transform: str, num_in: np.ndarray, rows: np.ndarray | None,
            n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Mean and std (two passes, float64) of the train part for ``standardize``; None for ``none``."""
    size = len(rows) if rows is not None else n
    if transform == "none" or size == 0:
        return None, None
    dim = num_in.shape[1]
    total = np.zeros(dim)
    for a, b, sel in _blocks(n, rows):
        total += np.asarray(num_in[a:b], dtype=np.float64)[sel].sum(axis=0)
    mean = total / size
    sq = np.zeros(dim)
    for a, b, sel in _blocks(n, rows):
        sq += ((np.asarray(num_in[a:b], dtype=np.float64)[sel] - mean) ** 2).sum(axis=0)
    std = np.sqrt(sq / size)
    return mean, np.where(std > 0, std, 1.0)


# ---------------------------------------------------------------- open
def read_vocab(folder: Path, field: str) -> np.ndarray:
    """A field's vocabulary: its kept raw ids (int64, sorted), id ``v[i]`` -> index ``i + 1``."""
    return np.load(Path(folder) / VOCAB_DIR / f"{field}.npy")


def encode_ids(vocab: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Indices of raw ids under ``vocab`` (read_vocab), 0 (out of vocabulary) for unseen ids:
    what the store holds for the rows it was built from, and what new rows get."""
    raw = np.asarray(raw, dtype=np.int64)
    if len(vocab) == 0:
        return np.full(raw.shape, OOV_INDEX, dtype=np.int32)
    pos = np.minimum(np.searchsorted(vocab, raw), len(vocab) - 1)
    return np.where(vocab[pos] == raw, pos + 1, OOV_INDEX).astype(np.int32)


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text())


def _mapped_split(folder: Path, split: str, manifest: dict[str, Any]) -> dict[str, np.ndarray | None]:
    """One split's arrays, mapped: its source's x_cat, x_num, y and, for a part of a source, its row numbers."""
    info = manifest["splits"][split]
    where = folder / ROWS_DIR / info["source"]
    return {"x_cat": _load(where / "x_cat.npy"), "x_num": _load(where / "x_num.npy"), "y": _load(where / "y.npy"),
            "index": _load(folder / SPLITS_DIR / f"{split}.npy") if info["index"] else None}


def open_split(folder: Path, split: str, manifest: dict[str, Any]) -> Any:
    """One split, mapped, as a StoreSplit (read per batch)."""
    from .batches import StoreSplit

    return StoreSplit(**_mapped_split(folder, split, manifest), rates=manifest["label_rates"][split])


def mapped_rows(folder: Path, split: str, manifest: dict[str, Any]) -> int:
    """Map one split's arrays as open_split does, without torch; its row count. What
    pfms-client checks at start: a process that only validates need not import torch."""
    arrays = _mapped_split(folder, split, manifest)
    return len(arrays["index"] if arrays["index"] is not None else arrays["y"])


def open_store(folder: Path, settings: DatasetSettings, scenario: str) -> Any:
    """A prepared store as ScenarioData whose splits are memory-mapped (StoreSplit)."""
    from .tensors import ScenarioData

    manifest = read_manifest(folder)
    schema = settings.schema
    return ScenarioData(
        scenario=scenario,
        train=open_split(folder, "train", manifest),
        val=open_split(folder, "val", manifest),
        test=open_split(folder, "test", manifest),
        field_dims=[int(d) for d in manifest["field_dims"]],
        num_numerical=len(schema.numerical),
        task_names=schema.task_names,
        categorical_names=list(schema.categorical),
        numerical_names=list(schema.numerical),
        vocabularies=tuple(read_vocab(folder, f) for f in schema.categorical),
    )
