"""Running the server side for real: the command-line tools a deployment uses.

``local_run`` is ``pfms-run`` (``flwr run .`` on one machine: its own SuperLink,
nothing left behind), ``server_cli`` is ``pfms-server`` (a SuperLink with TLS and
node authentication) and ``certs`` is ``pfms-certs`` (a test CA, the SuperLink's
certificate, one key pair per SuperNode). Each is a module with a ``main``; none
is imported until it is used. ``app_stage`` copies the files of an app's FAB to a
folder of their own, so that ``flwr run`` builds the same FAB without listing a venv
inside the app (pfms-run uses it).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["app_stage", "certs", "local_run", "server_cli"]


def __getattr__(name: str) -> ModuleType:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f".{name}", __name__)
