"""Scenario data: schema, readers, validation, the prepared store, synthetic generators, MovieLens.

``open_scenario(cfg.dataset, "NL")`` is the one call a client makes: it
generates synthetic data (``dataset.generator``) or converts fetched raw files
(``dataset.source``, MovieLens) if needed, validates the scenario's files and
converts them once into a prepared, memory-mapped store (``store``; raising
DataValidationError before any training), and returns its splits mapped
(``batches.StoreSplit``). ``load_scenario`` is the same, read into memory as tensors.

The reading side is ``schema``, ``settings`` (the ``dataset`` node), ``errors``,
``readers``, ``encoding`` and ``tensors``; each source that makes data has its own
folder (``synthetic/``, ``movielens/``), and ``files`` publishes what they make
atomically. Names below are imported on first use (torch and pandas too), so
``pfms-generate`` starts fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tensors import ScenarioData

_EXPORTS = {
    "DataValidationError": "errors",
    "DatasetSchema": "schema",
    "DatasetSettings": "settings",
    "ScenarioData": "tensors",
    "TensorSplit": "tensors",
}

__all__ = [*_EXPORTS, "ensure_generated", "load_scenario", "open_scenario", "prepare_scenario"]


def prepare_scenario(cfg_dataset: Any, scenario: str, progress: Any = None) -> Any:
    """Generate (synthetic) or convert (raw source) if needed, then validate and convert
    the scenario into its prepared store (store.py) unless an up-to-date one exists.
    Returns the store's folder. ``progress(phase, rows, expected_rows_or_None)``."""
    from .settings import DatasetSettings
    from .store import prepare_scenario as prepare

    settings = (
        cfg_dataset
        if isinstance(cfg_dataset, DatasetSettings)
        else DatasetSettings.from_config(cfg_dataset)
    )
    settings.check_scenario(scenario)
    if settings.generator is not None:
        ensure_generated(settings, [scenario])
    if settings.source is not None:
        from .movielens.convert import ensure_converted

        ensure_converted(settings, [scenario])
    return prepare(settings, scenario, progress)


def open_scenario(cfg_dataset: Any, scenario: str) -> ScenarioData:
    """Prepare on first use, then map the store: splits are StoreSplits read per batch."""
    from .settings import DatasetSettings
    from .store import open_store

    settings = DatasetSettings.from_config(cfg_dataset)
    return open_store(prepare_scenario(settings, scenario), settings, scenario)


def load_scenario(cfg_dataset: Any, scenario: str) -> ScenarioData:
    """open_scenario with every split read into memory as tensors (x_cat int64,
    x_num float32, y float32): exactly what reading the files into frames and
    tensors.build_scenario_data give."""
    return open_scenario(cfg_dataset, scenario).in_memory()


def ensure_generated(cfg_dataset: Any, scenarios: Sequence[str] | None = None) -> None:
    """Generate the configured scenarios whose files are missing; check existing ones.

    No-op for a dataset without a ``generator`` node. The layout picks the
    generator: ``synthetic.aliexpress`` (a folder per scenario) or
    ``synthetic.tenrec`` (one file per scenario). An existing scenario made with
    other generator parameters is an error rather than silently reused.
    """
    from .settings import DatasetSettings

    settings = (
        cfg_dataset
        if isinstance(cfg_dataset, DatasetSettings)
        else DatasetSettings.from_config(cfg_dataset)
    )
    if settings.generator is None:
        return
    wanted = list(scenarios) if scenarios is not None else list(settings.scenarios)
    if settings.layout == "tenrec":
        from .synthetic.tenrec import ensure_tenrec_generated

        ensure_tenrec_generated(settings, wanted)
    else:
        from .synthetic.aliexpress import ensure_aliexpress_generated

        ensure_aliexpress_generated(settings, wanted)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
