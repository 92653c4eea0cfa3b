"""Running the server side for real: the command-line tools a deployment uses.

``local_run`` is ``pfms-run`` (``flwr run .`` on one machine: its own SuperLink,
nothing left behind), ``server_cli`` is ``pfms-server`` (a SuperLink with TLS and
node authentication) and ``certs`` is ``pfms-certs`` (a test CA, the SuperLink's
certificate, one key pair per SuperNode). Each is a module with a ``main``; none
is imported until it is used.
"""

__all__ = ["certs", "local_run", "server_cli"]
