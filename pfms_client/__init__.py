"""A data silo's code: the Flower ClientApp, its model, local training and data.

``client_app`` is the ClientApp (one message -> one ``Session`` on this node's
scenario), ``client_cli`` is ``pfms-client`` (a SuperNode bound to one scenario's
data), ``config`` composes the Hydra config and ``config_check`` checks the
client's keys; ``template`` is the naming contract the server groups tensors by,
``mmoe`` the model, ``trainer`` and ``local_update`` local training, ``metrics``
AUC/LogLoss, ``state`` the node's local state, ``procs`` the process helpers both
CLIs use; ``data/`` reads, makes and tensorises scenarios.

This package never imports ``pfms_server`` (an import-linter contract in
pyproject.toml checks it), so a silo's code can be read and audited on its own.
Names below are imported on first use: ``import pfms_client.template`` loads
neither torch nor flwr.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "config",
    "conf_dir": "config",
    "load_config": "config",
    "DataValidationError": "data",
    "load_scenario": "data",
    "ExpertTemplate": "template",
    "Group": "template",
    "classify": "template",
    "is_uploaded": "template",
    "shared_parts": "template",
    "uploaded_names": "template",
    "MMoE": "mmoe",
    "build_model": "mmoe",
    "TrainConfig": "trainer",
    "evaluate": "trainer",
    "train_local": "trainer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
