"""Every scenario's data checked before round 1 of a simulation (all data on this machine).

In a simulation the ClientApps read ``dataset.root`` on the same machine as the
server, so a file that fails validation can be found before any process trains:
``check_scenarios`` reads and validates each scenario through the client's data
entry point, one at a time (each is dropped before the next), and raises the
first ``DataValidationError`` (file, line, column). A deployed server never calls
it: there each silo's data stay on its own node.

A check that passed is remembered for the life of the process, keyed by the
dataset config and each scenario's files (path, size, mtime), so many in-process
runs on the same files (pfms-compare, the tests) validate them once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_PASSED: set[str] = set()


def _files_of(cfg_dataset: Any, scenario: str) -> list[tuple[str, int, int]] | None:
    """(path, size, mtime_ns) of the files a scenario is read from; None when there are none yet."""
    from pfms_client.data import DatasetSettings

    path = Path(DatasetSettings.from_config(cfg_dataset).scenario_path(scenario))
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    try:
        return [(str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in files]
    except OSError:
        return None


def _key(cfg_dataset: Any, scenario: str) -> str | None:
    files = _files_of(cfg_dataset, scenario)
    if not files:
        return None
    node = OmegaConf.to_container(cfg_dataset, resolve=True) if isinstance(cfg_dataset, DictConfig) else cfg_dataset
    return json.dumps([node, scenario, files], sort_keys=True, default=str)


def undecodable_cell(files: list[Path], encoding: str = "utf-8-sig") -> tuple[Path, int, str | None, str] | None:
    """(file, line, column, reason) of the first bytes that are not ``encoding``; None if all decode.

    Streams line by line (memory bounded by the longest line). The column is the
    header field the bad bytes fall in (None when the header itself is bad)."""
    for path in files:
        header: list[str] = []
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    text = raw.decode(encoding if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    field = raw[:exc.start].count(b",")
                    column = header[field] if field < len(header) else None
                    return path, number, column, f"bytes {raw[exc.start:exc.end]!r} are not {exc.encoding}"
                if number == 1:
                    header = text.rstrip("\r\n").split(",")
    return None


def _as_validation_error(cfg_dataset: Any, scenario: str, exc: ValueError) -> Exception:
    """A reader error that is not yet a DataValidationError, made one (file, line, column where found)."""
    from pfms_client.data import DataValidationError, DatasetSettings

    path = Path(DatasetSettings.from_config(cfg_dataset).scenario_path(scenario))
    if isinstance(exc, UnicodeDecodeError):
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        if (found := undecodable_cell(files)) is not None:
            file, line, column, reason = found
            return DataValidationError(file, reason, line=line, column=column)
    return DataValidationError(path, f"scenario {scenario!r}: {type(exc).__name__}: {exc}")


def check_scenarios(cfg: DictConfig) -> None:
    """Validate every scenario of ``cfg.dataset`` (generating synthetic data first if needed).

    Raises the first ``pfms_client.data.DataValidationError``; its message names the
    file, line and column. A reader error of another type (an undecodable byte, a split
    that leaves no rows) becomes one too, so every bad input ends in the same one line.
    The one call into the client's data code is here, so the entry point can change
    (a prepared store) without touching the callers.
    """
    from pfms_client.data import DataValidationError, prepare_scenario

    for scenario in (str(s) for s in cfg.dataset.scenarios):
        key = _key(cfg.dataset, scenario)
        if key is not None and key in _PASSED:
            continue
        try:  # validates while it builds the prepared store; a no-op when the store is current
            prepare_scenario(cfg.dataset, scenario)
        except DataValidationError:
            raise
        except ValueError as exc:  # UnicodeDecodeError, pandas' and the split's ValueErrors
            raise _as_validation_error(cfg.dataset, scenario, exc) from exc
        if (key := _key(cfg.dataset, scenario)) is not None:  # files may have just been generated
            _PASSED.add(key)
