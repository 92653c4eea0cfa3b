"""Publish a made data set atomically: what the generators and converters share.

A data set made by code (the synthetic generators, the MovieLens converter) is
written under temp names and renamed into place, so a reader never sees a
half-written file or folder, and several clients may make their own scenarios in
the same folder at once:

* a scenario folder (AliExpress layout, ``{root}/{scenario}/``) is filled in a
  temp folder beside it (``staged_folder``) and renamed into place;
* a single scenario file (Tenrec layout, ``{root}/{scenario}.csv``) gets a
  ``.meta.json`` sidecar; both are written to temp names and renamed, the
  sidecar first, so an existing CSV always has its meta (``publish_scenario_file``
  for columns in memory, ``publish_scenario_stream`` for blocks appended as they
  are made, with the meta computed after the last one);
* either way the scenario's meta is merged into ``{root}/meta.json`` under a
  file lock (``update_index``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .csv_writer import CsvWriter
from .errors import DataValidationError

META_FILE = "meta.json"
RATE_DIGITS = 6  # rates in a made data set's meta are rounded to this many digits
_INDEX_LOCK = ".meta.lock"
_FOLDER_MODE = 0o755
_SIDECAR_SUFFIX = ".meta.json"


def sidecar_path(csv_path: Path) -> Path:
    """``QK-video.csv`` -> ``QK-video.meta.json``."""
    return csv_path.with_name(csv_path.stem + _SIDECAR_SUFFIX)


def publish_scenario_file(
    csv_path: Path,
    header: Sequence[str],
    columns: Sequence[np.ndarray],
    decimals: Sequence[int | None],
    meta: dict[str, Any],
    scenario: str,
) -> None:
    """Write one scenario's columns and meta (``publish_scenario_stream`` with one block)."""
    publish_scenario_stream(csv_path, header, decimals, [columns], lambda: meta, scenario)


def publish_scenario_stream(
    csv_path: Path,
    header: Sequence[str],
    decimals: Sequence[int | None],
    blocks: Iterable[Sequence[np.ndarray]],
    meta_of: Callable[[], dict[str, Any]],
    scenario: str,
) -> dict[str, Any]:
    """Append ``blocks`` of columns to a temp CSV, then publish meta and CSV; returns the meta.

    ``meta_of`` is called after the last block (a streaming generator knows its
    statistics only then). The sidecar is renamed into place before the CSV, so
    an existing CSV always has its meta; an error on the way (a crash, a full
    disk) leaves the temp file removed and any earlier CSV untouched.
    """
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            writer = CsvWriter(fh, header, decimals)
            for columns in blocks:
                writer.write(columns)
        meta = meta_of()
        write_json(sidecar_path(csv_path), meta)  # atomic (temp file + rename)
        os.replace(tmp, csv_path)
    finally:
        tmp.unlink(missing_ok=True)
    update_index(csv_path.parent, scenario, meta)
    return meta


def check_made_with(csv_path: Path, params: dict[str, Any], remedy: str) -> None:
    """An existing CSV must come with a sidecar recording exactly ``params``."""
    meta_path = sidecar_path(csv_path)
    if not meta_path.is_file():
        raise DataValidationError(
            meta_path, f"{csv_path.name} exists but was not made by this code (no meta); {remedy}"
        )
    found = json.loads(meta_path.read_text()).get("params", {})
    diff = sorted(k for k in set(found) | set(params) if found.get(k) != params.get(k))
    if diff:
        details = ", ".join(
            f"{k}: {found.get(k)!r} on disk vs {params.get(k)!r} configured" for k in diff
        )
        raise DataValidationError(meta_path, f"made with other parameters ({details}); {remedy}")



@contextmanager
def staged_folder(final: Path, overwrite: bool) -> Iterator[Path]:
    """A temp folder beside ``final`` to fill; renamed into place when the block ends cleanly."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        tmp.chmod(_FOLDER_MODE)  # mkdtemp makes it owner-only
        yield tmp
        publish_folder(tmp, final, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished temp folder into place; losing a race to an identical folder is fine."""
    if overwrite and final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
        os.replace(final, trash / final.name)
        try:
            os.rename(tmp, final)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise  # a real failure, not another process that got there first


def update_index(out_dir: Path, scenario: str, meta: dict[str, Any]) -> None:
    """Merge one scenario into ``{out_dir}/meta.json`` under a file lock (several writers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / META_FILE
    with open(out_dir / _INDEX_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index: dict[str, Any] = {"scenarios": {}}
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
            except json.JSONDecodeError:
                pass  # rebuilt from the scenarios written from now on
        index.setdefault("scenarios", {})[scenario] = meta
        write_json(index_path, index)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON, written to a temp name and renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
