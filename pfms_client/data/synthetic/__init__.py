"""Synthetic data with known structure, in two schemas: AliExpress and Tenrec.

``aliexpress`` (one folder per scenario: train.csv, test.csv, meta.json) and
``tenrec`` (one CSV per scenario plus a meta sidecar) each simulate scenarios
(pure numpy) and write them atomically; ``params`` holds both generators' knobs
(the ``dataset.generator`` node), ``stats`` what both share (random streams,
label calibration, oracle AUC), ``progress`` the progress line of big runs and
``cli`` is ``pfms-generate``. Both generators stream: ``simulate_blocks`` /
``simulate_tenrec_blocks`` yield the rows a block at a time. A run never
calls them directly: ``pfms_client.data.load_scenario`` generates a missing
configured scenario. Names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GeneratorParams": "params",
    "KnobParams": "params",
    "TenrecGeneratorParams": "params",
    "generate": "aliexpress",
    "generate_scenario": "aliexpress",
    "simulate_scenario": "aliexpress",
    "simulate_blocks": "aliexpress",
    "ensure_aliexpress_generated": "aliexpress",
    "generate_tenrec": "tenrec",
    "simulate_tenrec_scenario": "tenrec",
    "simulate_tenrec_blocks": "tenrec",
    "ensure_tenrec_generated": "tenrec",
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
