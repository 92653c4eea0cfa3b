"""The prepared store: a scenario's rows validated once, as typed columns on disk.

``prepare_scenario`` reads a scenario's source files (CSV or Parquet) in one
streaming pass of validated chunks (readers.iter_checked_chunks) and writes, per
split, ``<split>/x_cat.npy`` (int32 indices after the vocabulary fitted on the
train part, 0 = out of vocabulary), ``<split>/x_num.npy`` (float32, scaled as
``numeric_transform`` says) and ``<split>/y.npy`` (uint8 task labels), plus
``manifest.json``: the format version, the settings that shape the encoding, a
fingerprint of every source file, row counts, vocabulary sizes and label rates.
``open_store`` maps the arrays (``np.load(mmap_mode='r')``): opening costs
milliseconds and no memory grows with the row count.

How it is built, and why it equals the in-memory encoding (tensors.py) exactly:
pass 1 gives each raw id of a field a provisional index in order of first
appearance (memory: the field's distinct ids) and writes provisional indices,
float32 numericals and labels to scratch files; then the split is drawn exactly as
``validation_indices`` (and, for one-file layouts, ``split_rows``) draw it; the ids
counted on the train part (min_count) get their final index in sorted raw-id order
(CategoricalVocab's order); pass 2 gathers each split's rows (sorted indices, so
nearly sequential reads) and remaps them. ``standardize`` takes mean and std of the
float32-rounded train values (the in-memory path uses float64 inputs: the scaled
values then differ by about 1e-7 relative; ``none``, the default, is exact).

A store is rebuilt when a source file, the schema or an encoding setting changes.
It is built in a temporary folder beside its place and renamed into it, so a crash
leaves the old store or none; an exclusive ``fcntl.flock`` on a lock file beside
it makes a second process preparing the same scenario wait, then reuse it.
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

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
FINGERPRINT_BYTES = 1 << 16  # hashed from the head and the tail of every source file
GATHER_ROWS = 262_144  # rows per step of the second pass

# progress(phase, rows_done, rows_expected or None)
Progress = Callable[[str, int, "int | None"], None]


# ---------------------------------------------------------------- where a store lives
def store_root(settings: DatasetSettings) -> Path:
    """``dataset.store_dir``, else ``$PFMS_HOME/prepared`` (``~/.pfms/prepared``)."""
    if settings.store_dir is not None:
        return Path(settings.store_dir)
    home = os.environ.get("PFMS_HOME") or str(Path.home() / ".pfms")
    return Path(home) / "prepared"


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


def encoding_settings(settings: DatasetSettings, scenario: str) -> dict[str, Any]:
    """Everything that changes the prepared arrays (a change means a rebuild)."""
    schema = settings.schema
    return {
        "format": FORMAT_VERSION,
        "scenario": scenario,
        "layout": settings.layout,
        "sources": {k: str(p.resolve()) for k, p in sources(settings, scenario).items()},
        "categorical": list(schema.categorical),
        "numerical": list(schema.numerical),
        "labels": list(schema.labels),
        "tasks": [[t.name, list(t.all_of)] for t in schema.tasks],
        "constraints": [[c.label, c.requires] for c in schema.constraints],
        "id_columns": list(schema.id_columns),
        "ignore_columns": list(schema.ignore_columns),
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
        import pandas as pd

        codes, uniq = pd.factorize(col, sort=False)
        uniq = np.asarray(uniq, dtype=np.int64)
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
        return prov[codes].astype(np.int32)

    def raw_ids(self) -> np.ndarray:
        return np.concatenate(self.raw_by_prov) if self.raw_by_prov else np.zeros(0, dtype=np.int64)


@dataclass
class _Scratch:
    """Pass 1's output for one source file: provisional ids, float32 numericals, labels."""

    folder: Path
    role: str
    rows: int = 0

    def path(self, what: str) -> Path:
        return self.folder / f"{self.role}.{what}.raw"

    def arrays(self, num_cat: int, num_num: int, num_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (_raw_map(self.path("cat"), np.int32, (self.rows, num_cat)),
                _raw_map(self.path("num"), np.float32, (self.rows, num_num)),
                _raw_map(self.path("lab"), np.int8, (self.rows, num_labels)))


def _raw_map(path: Path, dtype: Any, shape: tuple[int, int]) -> np.ndarray:
    if shape[0] * shape[1] == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


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


def _read_source(path: Path, scratch: _Scratch, settings: DatasetSettings, tables: list[_IdTable],
                 progress: Progress | None) -> None:
    """Pass 1 over one file; a file pyarrow refuses but pandas accepts is read again with pandas."""
    expected = _expected_rows(path, settings.max_rows)
    for engine in ("arrow", "pandas"):
        saved = [t.snapshot() for t in tables]
        scratch.rows = 0
        try:
            with open(scratch.path("cat"), "wb") as fc, open(scratch.path("num"), "wb") as fn, \
                    open(scratch.path("lab"), "wb") as fl:
                for chunk in iter_checked_chunks(path, settings.schema, max_rows=settings.max_rows, engine=engine):
                    prov = np.empty((len(tables), len(chunk)), dtype=np.int32)  # column-major
                    for f, table in enumerate(tables):
                        prov[f] = table.index(chunk.cat[:, f])
                    fc.write(prov.T.tobytes())  # row-major on disk
                    fn.write(np.ascontiguousarray(chunk.num, dtype=np.float32).data)
                    fl.write(np.ascontiguousarray(chunk.labels).data)
                    scratch.rows += len(chunk)
                    if progress is not None:
                        progress(f"read {path.name}", scratch.rows, expected)
            return
        except SlowPathNeeded:
            for t, state in zip(tables, saved, strict=True):
                t.restore(state)
    raise AssertionError("unreachable: the pandas engine never asks for a slower path")


def _split_rows(settings: DatasetSettings, scratches: dict[str, _Scratch],
                paths: dict[str, Path]) -> dict[str, tuple[str, np.ndarray | None]]:
    """Each split as (source role, sorted row indices or None = every row): the same draws
    as readers.split_rows and tensors.validation_indices."""
    split = settings.split
    if "all" in scratches:  # one file: seeded test rows first, then val off the rest
        n = scratches["all"].rows
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
    t_idx, v_idx = validation_indices(scratches["train"].rows, split.val_fraction, split.seed)
    return {"train": ("train", t_idx), "val": ("train", v_idx), "test": ("test", None)}


def _chunks(n: int, rows: np.ndarray | None) -> Iterator[tuple[int, int, np.ndarray | slice]]:
    for a in range(0, n, GATHER_ROWS):
        b = min(n, a + GATHER_ROWS)
        yield a, b, (rows[a:b] if rows is not None else slice(a, b))


def _build(tmp: Path, settings: DatasetSettings, scenario: str, wanted: dict[str, Any],
           progress: Progress | None) -> None:
    t0 = time.perf_counter()
    schema = settings.schema
    n_cat, n_num, n_lab = len(schema.categorical), len(schema.numerical), len(schema.labels)
    paths = sources(settings, scenario)
    tables = [_IdTable() for _ in schema.categorical]
    scratches = {role: _Scratch(tmp, role) for role in paths}
    for role, path in paths.items():
        _read_source(path, scratches[role], settings, tables, progress)
    splits = _split_rows(settings, scratches, paths)
    arrays = {role: s.arrays(n_cat, n_num, n_lab) for role, s in scratches.items()}

    # vocabularies: ids counted on the train part, final index in sorted raw-id order
    role, rows = splits["train"]
    n_train = len(rows) if rows is not None else scratches[role].rows
    counts = [np.zeros(t.count, dtype=np.int64) for t in tables]
    for a, b, sel in _chunks(n_train, rows):
        prov = np.asarray(arrays[role][0][sel])
        for f in range(n_cat):
            counts[f] += np.bincount(prov[:, f], minlength=tables[f].count)
    remaps, field_dims = [], []
    for f, table in enumerate(tables):
        kept = np.flatnonzero(counts[f] >= settings.min_count)
        order = kept[np.argsort(table.raw_ids()[kept], kind="stable")]
        remap = np.full(table.count, OOV_INDEX, dtype=np.int32)
        remap[order] = np.arange(1, len(order) + 1, dtype=np.int32)
        remaps.append(remap)
        field_dims.append(len(order) + 1)
    mean, std = _scaler(settings.numeric_transform, arrays[role][1], rows, n_train, n_num)

    label_col = {c: j for j, c in enumerate(schema.labels)}
    # one gather remaps every field: provisional index + the field's offset into all remaps
    offsets = np.cumsum([0] + [len(r) for r in remaps[:-1]]).astype(np.int64)
    flat_remap = np.concatenate(remaps) if remaps else np.zeros(0, dtype=np.int32)
    rows_out, rates = {}, {}
    done, total = 0, sum(len(r) if r is not None else scratches[s].rows for s, r in splits.values())
    for name, (role, rows) in splits.items():
        n = len(rows) if rows is not None else scratches[role].rows
        cat_in, num_in, lab_in = arrays[role]
        (tmp / name).mkdir()
        x_cat = _NpyWriter(tmp / name / "x_cat.npy", np.int32, (n, n_cat))
        x_num = _NpyWriter(tmp / name / "x_num.npy", np.float32, (n, n_num))
        y = _NpyWriter(tmp / name / "y.npy", np.uint8, (n, schema.num_tasks))
        positives = np.zeros(schema.num_tasks, dtype=np.int64)
        for a, b, sel in _chunks(n, rows):
            x_cat.write(flat_remap[np.asarray(cat_in[sel]) + offsets])
            num = num_in[sel]
            if mean is not None:
                num = ((np.asarray(num, dtype=np.float64) - mean) / std).astype(np.float32)
            x_num.write(num)
            lab = np.asarray(lab_in[sel])
            tasks = np.empty((b - a, schema.num_tasks), dtype=np.uint8)
            for t, task in enumerate(schema.tasks):
                tasks[:, t] = np.logical_and.reduce([lab[:, label_col[c]] == 1 for c in task.all_of])
            y.write(tasks)
            positives += tasks.sum(axis=0, dtype=np.int64)
            done += b - a
            if progress is not None:
                progress("write store", done, total)
        for writer in (x_cat, x_num, y):
            writer.close()
        rows_out[name] = n
        rates[name] = {t.name: (float(positives[i]) / n if n else 0.0) for i, t in enumerate(schema.tasks)}
    del arrays
    for s in scratches.values():
        for what in ("cat", "num", "lab"):
            s.path(what).unlink(missing_ok=True)
    manifest = {
        "format": FORMAT_VERSION,
        "settings": wanted,
        "sources": {k: fingerprint(p) for k, p in paths.items()},
        "rows": rows_out,
        "field_dims": field_dims,
        "task_names": schema.task_names,
        "label_rates": rates,
        "numeric_scaler": None if mean is None else {"mean": mean.tolist(), "std": std.tolist()},
        "prepare_seconds": round(time.perf_counter() - t0, 3),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


class _NpyWriter:
    """A .npy file written front to back in row blocks (plain writes: no page faults of a
    writable mapping), synced to disk when closed."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, int]) -> None:
        self.dtype, self.shape, self.rows = np.dtype(dtype), shape, 0
        self.fh = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self.fh, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        assert block.shape[1:] == self.shape[1:], (block.shape, self.shape)
        self.fh.write(block.data)
        self.rows += block.shape[0]

    def close(self) -> None:
        assert self.rows == self.shape[0], (self.rows, self.shape)
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


def _load(path: Path) -> np.ndarray:
    """Mapped read-only; an empty array (nothing to map) is read."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        return np.load(path)


def _scaler(transform: str, num_in: np.ndarray, rows: np.ndarray | None, n: int,
            dim: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Mean and std (two passes, float64) of the train part for ``standardize``; None for ``none``."""
    if transform == "none" or n == 0:
        return None, None
    total = np.zeros(dim)
    for _, _, sel in _chunks(n, rows):
        total += np.asarray(num_in[sel], dtype=np.float64).sum(axis=0)
    mean = total / n
    sq = np.zeros(dim)
    for _, _, sel in _chunks(n, rows):
        sq += ((np.asarray(num_in[sel], dtype=np.float64) - mean) ** 2).sum(axis=0)
    std = np.sqrt(sq / n)
    return mean, np.where(std > 0, std, 1.0)


# ---------------------------------------------------------------- open
def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text())


def open_split(folder: Path, split: str, rates: dict[str, float] | None = None) -> Any:
    from .batches import StoreSplit

    return StoreSplit(
        x_cat=_load(folder / split / "x_cat.npy"),
        x_num=_load(folder / split / "x_num.npy"),
        y=_load(folder / split / "y.npy"),
        rates=rates,
    )


def open_store(folder: Path, settings: DatasetSettings, scenario: str) -> Any:
    """A prepared store as ScenarioData whose splits are memory-mapped (StoreSplit)."""
    from .tensors import ScenarioData

    manifest = read_manifest(folder)
    schema = settings.schema
    return ScenarioData(
        scenario=scenario,
        train=open_split(folder, "train", manifest["label_rates"]["train"]),
        val=open_split(folder, "val", manifest["label_rates"]["val"]),
        test=open_split(folder, "test", manifest["label_rates"]["test"]),
        field_dims=[int(d) for d in manifest["field_dims"]],
        num_numerical=len(schema.numerical),
        task_names=schema.task_names,
        categorical_names=list(schema.categorical),
        numerical_names=list(schema.numerical),
    )
