"""MovieLens-100K: real ratings as scenarios (user groups) and tasks (like, love).

``fetch`` gets RecBole's ml-100k files out of the recbole wheel on PyPI (the
licence forbids storing them here), ``recbole_files`` reads those tab-separated
files with validation, and ``convert`` turns them into one Tenrec-layout CSV per
scenario on first use (``ensure_converted``, called by ``load_scenario``).
``python -m pfms_client.data.movielens fetch`` does all of it once from the
command line. Names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MovieLensSource": "convert",
    "ensure_converted": "convert",
    "fetch_raw": "fetch",
    "read_recbole_file": "recbole_files",
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
