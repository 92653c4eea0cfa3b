"""The pfms ClientApp, with a mod that corrupts the train replies the run config names."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from pfms_client import client_app as pfms
from pfms_client.wire import pack, unpack


def corrupt(arrays: dict[str, np.ndarray], kind: str, index: int = 0) -> str:
    """Spoil the ``index``-th tensor (by name) of ``arrays`` in place; return its name."""
    name = sorted(arrays)[index]
    value = arrays[name].copy()
    if kind == "nan":
        value.flat[0] = np.nan
        arrays[name] = value
    elif kind == "shape":
        arrays[name] = np.ascontiguousarray(value[..., :1])
    elif kind == "dtype":
        arrays[name] = value.astype(np.float64)
    elif kind == "name":
        del arrays[name]
        name += ".renamed"
        arrays[name] = value
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return name


def faults(msg: Message, context: Context, call_next) -> Message:
    reply = call_next(msg, context)
    if msg.metadata.message_type != "train" or reply.has_error():
        return reply
    server_round = int(msg.content["config"]["server-round"])
    scenario = str(reply.content["meta"]["scenario"])
    spoiled = 0  # a second fault of the same reply spoils the next tensor
    arrays = unpack(reply.content["arrays"])  # spoiled before packing, as a faulty client would
    for spec in str(context.run_config.get("faults", "")).split():
        at, who, kind = spec.split(":")
        if int(at) == server_round and who == scenario:
            corrupt(arrays, kind, spoiled)
            spoiled += 1
    if spoiled:
        reply.content["arrays"] = pack(arrays)
    return reply


app = ClientApp(mods=[faults])
app.query()(pfms.query)
app.train()(pfms.train)
app.evaluate()(pfms.evaluate_)
