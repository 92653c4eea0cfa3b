"""``PollingGrid``: a Grid whose ``send_and_receive`` looks for replies every ``poll_interval`` s.

Flower 1.41/1.42's deployed Grid (``HttpGrid``) pushes the messages and then
pulls the replies every 3 s, so every message phase of a deployed round ends up
to 3 s after its last reply arrived. This wrapper does the same push and pull
through the Grid's public API (``push_messages``, ``pull_messages``) with a
shorter wait; nothing of Flower is patched. A Grid without push and pull (the
in-process test Grid) keeps its own ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["PollingGrid"]


class PollingGrid(Grid):
    """Delegates everything to ``inner``; replies are pulled every ``poll_interval`` seconds."""

    def __init__(self, inner: Grid, poll_interval: float) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval {poll_interval!r}: expected seconds > 0")
        self.inner = inner
        self.poll_interval = float(poll_interval)

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self.inner.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self.inner.run

    def create_message(self, *args, **kwargs) -> Message:  # type: ignore[no-untyped-def]
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        try:
            pending = set(self.inner.push_messages(messages))
        except NotImplementedError:  # a Grid that only sends and receives (tests' in-process Grid)
            return self.inner.send_and_receive(messages, timeout=timeout)
        end = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while pending:
            got = list(self.inner.pull_messages(pending))
            replies += got
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (timeout is not None and time.monotonic() >= end):
                break
            time.sleep(self.poll_interval)
        return replies
