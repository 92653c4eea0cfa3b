"""The server: one Flower ServerApp and Strategy that run any aggregation rule.

``server_app`` is the ServerApp (config check, resume, the rounds, the summary),
``strategy`` the one Flower Strategy (``ScenarioStrategy``: orchestration only),
``report`` writes a run folder (metrics.csv, summary, plots), ``config_check``
checks a run's config before anything starts and ``data_check`` every scenario's
data before round 1 of a simulation. Below them:

* ``aggregation/``: the rules' math (PF-MSMTrec, FedAvg, FedAMP, conflict,
  personalization, towers, state, validation); numpy and scipy only;
* ``deploy/``: ``pfms-server``, ``pfms-run`` and ``pfms-certs``;
* ``experiments/``: ``pfms-compare`` and its report, the in-process Grid and the
  centralized reference.

The server may import ``pfms_client`` (the template's naming contract, the
config); the client never imports the server. Names below are imported on first
use, so ``import pfms_server.aggregation`` loads neither flwr nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ScenarioStrategy": "strategy",
    "app": "server_app",
    "check_scenarios": "data_check",
    "load_run_config": "config_check",
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
