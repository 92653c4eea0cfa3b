"""A Grid that calls a ClientApp in this process: fast, deterministic simulations.

Used by the tests and by anything that wants many short runs without starting a
SuperLink. Each node keeps its own Context (and so its own ``context.state``)
across messages, as a SuperNode does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

ClientCall = Callable[[Message, Context], Message]


class InProcessGrid(Grid):
    """Nodes are Contexts in a dict; ``send_and_receive`` runs the ClientApp directly."""

    def __init__(self, client_app: ClientCall, node_configs: list[dict[str, Any]],
                 run_config: dict[str, Any] | None = None, run_id: int = 1, first_node_id: int = 1001) -> None:
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = 1
        self.client_app = client_app
        self.run_config = dict(run_config or {})
        self.contexts: dict[int, Context] = {}
        self.offline: set[int] = set()
        self._run_id = run_id
        for i, nc in enumerate(node_configs):
            self.add_node(first_node_id + i, nc)

    def add_node(self, node_id: int, node_config: dict[str, Any]) -> None:
        self.contexts[node_id] = Context(
            run_id=self._run_id, node_id=node_id, node_config=dict(node_config),
            state=RecordDict(), run_config=dict(self.run_config),
        )

    # Grid API ------------------------------------------------------------------------
    def set_run(self, run: Any) -> None:  # pragma: no cover - runs are implicit here
        pass

    @property
    def run(self) -> Any:  # pragma: no cover
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self.contexts or node in self.offline:
                continue  # like a node that never answers
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as exc:  # the runtime turns ClientApp exceptions into error replies
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            replies.append(reply)
        return replies

