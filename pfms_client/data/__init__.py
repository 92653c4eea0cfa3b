"""Scenario data: schema, readers, validation, synthetic generator, tensors.

``load_scenario(cfg.dataset, "NL")`` is the one call a client makes: it
generates synthetic data (``dataset.generator``) or converts fetched raw files
(``dataset.source``, MovieLens) if needed, reads and validates the scenario's files
(raising DataValidationError before any training) and returns tensors.
torch and pandas are imported on first use, so ``pfms-generate`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DataValidationError
from .schema import DatasetSchema
from .settings import DatasetSettings

if TYPE_CHECKING:
    from .tensors import ScenarioData, TensorSplit

__all__ = [
    "DataValidationError",
    "DatasetSchema",
    "DatasetSettings",
    "ScenarioData",
    "TensorSplit",
    "load_scenario",
]


def load_scenario(cfg_dataset: Any, scenario: str) -> ScenarioData:
    """Generate (synthetic) or convert (raw source) -> read -> validate -> tensorise one scenario."""
    from .generator import ensure_generated
    from .readers import read_scenario
    from .tensors import build_scenario_data

    settings = DatasetSettings.from_config(cfg_dataset)
    settings.check_scenario(scenario)
    if settings.generator is not None:
        ensure_generated(settings, [scenario])
    if settings.source is not None:
        from .movielens import ensure_converted

        ensure_converted(settings, [scenario])
    train_df, test_df = read_scenario(settings, scenario)
    return build_scenario_data(scenario, train_df, test_df, settings)


def __getattr__(name: str) -> Any:
    if name in ("ScenarioData", "TensorSplit"):
        from . import tensors

        return getattr(tensors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
