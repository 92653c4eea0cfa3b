"""One code-made scenario file: a CSV plus a ``.meta.json`` sidecar, published atomically.

For single-file layouts (Tenrec: ``{root}/{scenario}.csv``) whose files are
made by code: the synthetic Tenrec generator and the MovieLens converter. Both
files are written to temp names and renamed into place, the sidecar first, so
a reader never sees a half-written CSV and an existing CSV always has its meta;
several clients may build their own scenarios in the same folder at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .csv_writer import write_csv
from .errors import DataValidationError
from .generator import _update_index, _write_json

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
    """Write meta then CSV under temp names, rename each into place, index in ``meta.json``."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(sidecar_path(csv_path), meta)  # atomic (temp file + rename)
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    try:
        write_csv(tmp, header, columns, decimals)
        os.replace(tmp, csv_path)
    finally:
        tmp.unlink(missing_ok=True)
    _update_index(csv_path.parent, scenario, meta)


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

