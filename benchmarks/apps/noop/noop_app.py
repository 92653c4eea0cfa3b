"""Flower's floor: the message pattern of a pfms run (query, train, evaluate) with no work.

The ServerApp waits for ``nodes`` SuperNodes, queries each once, then runs
``rounds`` rounds: a train message per node carrying ``payload-floats`` float32
values (echoed back), and an evaluate message per node each round
(``schedule=separate``) or once after the last round (``schedule=merged``). It
logs ``[ROUND r/R]`` lines as Flower's Strategy does, so bench_deploy.py times both
apps the same way. No torch, no data: what is left is Flower's own cost.
"""

from __future__ import annotations

import time
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

server = ServerApp()
client = ClientApp()


def _messages(nodes: list[int], message_type: str, payload: np.ndarray | None) -> list[Message]:
    out = []
    for node in nodes:
        content = RecordDict({"config": ConfigRecord({"x": 1})})
        if payload is not None:
            content["arrays"] = ArrayRecord({"w": Array(payload)})
        out.append(Message(content, message_type=message_type, dst_node_id=node))
    return out


def _send(grid: Grid, nodes: list[int], message_type: str, payload: np.ndarray | None) -> list[Message]:
    replies = list(grid.send_and_receive(_messages(nodes, message_type, payload), timeout=600))
    failed = [r.error.reason for r in replies if r.has_error()]
    if len(replies) != len(nodes) or failed:
        raise RuntimeError(f"{message_type}: {len(replies)} of {len(nodes)} replies, errors {failed}")
    return replies


def _answering_nodes(grid: Grid, want: int) -> list[int]:
    """The first ``want`` nodes that answer a query (the query phase is not timed).

    bench_deploy restarts the SuperNodes just before this run; a stopped node stays listed
    until the SuperLink's heartbeat timeout, and a message to it fails "Node Unavailable".
    Once pfms's run got faster, the floor run started inside that window."""
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want:
            replies = grid.send_and_receive(_messages(nodes, MessageType.QUERY, None), timeout=600)
            alive = sorted(r.metadata.src_node_id for r in replies if not r.has_error())
            if len(alive) >= want:
                return alive[:want]
        time.sleep(1.0)


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds, want = int(cfg["rounds"]), int(cfg["nodes"])
    schedule, poll = str(cfg["schedule"]), float(cfg["poll-interval"])
    if schedule not in ("separate", "merged"):
        raise ValueError(f"schedule {schedule!r}: expected 'separate' or 'merged'")
    if poll > 0:
        from pfms_server.polling_grid import PollingGrid  # the same transport pfms's strategy uses

        grid = PollingGrid(grid, poll)
    payload = np.zeros(int(cfg["payload-floats"]), dtype=np.float32)
    nodes = _answering_nodes(grid, want)
    for r in range(1, rounds + 1):
        log(INFO, "[ROUND %s/%s]", r, rounds)
        _send(grid, nodes, MessageType.TRAIN, payload)
        if schedule == "separate":
            _send(grid, nodes, MessageType.EVALUATE, payload)
    if schedule == "merged":
        _send(grid, nodes, MessageType.EVALUATE, payload)
    log(INFO, "noop: %d rounds done", rounds)


def _reply(msg: Message, arrays: bool) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": 1})})
    if arrays:
        content["arrays"] = msg.content["arrays"]
    return Message(content, reply_to=msg)


@client.query()
def query(msg: Message, context: Context) -> Message:  # noqa: ARG001
    return _reply(msg, arrays=False)


@client.train()
def train(msg: Message, context: Context) -> Message:  # noqa: ARG001
    return _reply(msg, arrays=True)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:  # noqa: ARG001
    return _reply(msg, arrays=False)
