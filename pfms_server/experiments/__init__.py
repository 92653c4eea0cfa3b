"""Experiments on one machine, no deployment: comparisons of rules and the references.

``compare`` is ``pfms-compare`` (arms x seeds run one after another, each through the
real ServerApp and ClientApp), ``compare_report`` turns their run folders into
results.csv / results.md / paired.csv / plots, ``inprocess`` is the in-process Grid
those runs (and the tests) use, and ``centralized`` is the pooled-rows reference that
ignores privacy (``strategy=centralized``, no Flower). None is imported until used.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["centralized", "compare", "compare_report", "inprocess"]


def __getattr__(name: str) -> ModuleType:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f".{name}", __name__)
