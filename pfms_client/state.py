"""A client's persistent local model state, keyed by scenario id.

Flower rebuilds the ClientApp for every message, so everything that never leaves
the client (embeddings, gates, task experts, every BN tensor and statistic) lives
here between rounds: in Flower's ``context.state`` (survives within a run), and,
when a state directory is configured, on disk too so a restarted node rejoins
with its own state. The key is the scenario id, never the Flower node id.

Each snapshot is tagged with the server round that produced it, and the one
before it is kept too: a server that dies after a client trained round r but
before it aggregated that round resumes by sending round r again, and the client
must then train from its round r-1 state, not train round r twice.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

STATE_PREFIX = "pfms.local."
PREVIOUS_PREFIX = "pfms.local-previous."
META_PREFIX = "pfms.meta."

Tensors = dict[str, torch.Tensor]


class LocalStateError(RuntimeError):
    """The kept snapshots cannot serve the round the server asks for."""


@dataclass
class Snapshot:
    state: Tensors
    round: int  # the server round whose training produced it
    rounds_trained: int  # how many rounds this scenario has trained to get here


class LocalState:
    """Load/save the ``state_dict`` of one scenario's model, as of a server round."""

    def __init__(self, store: RecordDict, scenario: str, state_dir: str | None = None) -> None:
        self.store = store
        self.scenario = scenario
        self.path = Path(state_dir) / f"{scenario}.pt" if state_dir else None
        self.base: Snapshot | None = None  # what the current message started from

    @property
    def rounds_trained(self) -> int:
        return self.base.rounds_trained if self.base is not None else 0

    def _snapshots(self) -> list[Snapshot]:
        """Newest first; from memory within a run, else from disk (a restarted node)."""
        meta = self.store.get(META_PREFIX + self.scenario)
        if meta is not None:
            out = [Snapshot(_tensors(self.store[STATE_PREFIX + self.scenario]), int(meta["round"]),
                            int(meta["rounds_trained"]))]
            if PREVIOUS_PREFIX + self.scenario in self.store:
                out.append(Snapshot(_tensors(self.store[PREVIOUS_PREFIX + self.scenario]),
                                    int(meta["previous_round"]), int(meta["previous_rounds_trained"])))
            return out
        if self.path is None or not self.path.is_file():
            return []
        payload = torch.load(self.path, map_location="cpu", weights_only=True)
        snaps = [payload] + ([payload["previous"]] if payload.get("previous") else [])
        return [Snapshot(p["state"], int(p["round"]), int(p["rounds_trained"])) for p in snaps]

    def load(self, before_round: int | None = None) -> Tensors | None:
        """The newest state produced by a round earlier than ``before_round`` (None: the newest).

        None when this scenario never trained. Raises LocalStateError when every
        kept snapshot is from ``before_round`` or later: training from a later
        state would silently train a round twice.
        """
        snaps = self._snapshots()
        usable = [s for s in snaps if before_round is None or s.round < before_round]
        if snaps and not usable:
            raise LocalStateError(
                f"scenario {self.scenario}: the server asks for round {before_round}, but the local state "
                f"only holds rounds {[s.round for s in snaps]}; a server may resume at most one round back"
            )
        self.base = usable[0] if usable else None
        return self.base.state if self.base is not None else None

    def save(self, state: Tensors, server_round: int) -> None:
        """Keep ``state`` as the result of ``server_round``, and what it started from."""
        current = Snapshot({k: v.detach().cpu().clone() for k, v in state.items()}, server_round,
                           self.rounds_trained + 1)
        previous = self.base
        self.store[STATE_PREFIX + self.scenario] = _record(current.state)
        meta = {"round": current.round, "rounds_trained": current.rounds_trained}
        if previous is not None:
            self.store[PREVIOUS_PREFIX + self.scenario] = _record(previous.state)
            meta |= {"previous_round": previous.round, "previous_rounds_trained": previous.rounds_trained}
        elif PREVIOUS_PREFIX + self.scenario in self.store:
            del self.store[PREVIOUS_PREFIX + self.scenario]
        self.store[META_PREFIX + self.scenario] = ConfigRecord(meta)
        if self.path is not None:
            payload = _payload(current)
            payload["previous"] = _payload(previous) if previous is not None else None
            atomic_torch_save(payload, self.path)
        self.base = current


def _record(state: Tensors) -> ArrayRecord:
    return ArrayRecord({k: Array(np.require(v.numpy(), requirements="C")) for k, v in state.items()})


def _tensors(record: ArrayRecord) -> Tensors:
    return {k: torch.from_numpy(v.numpy().copy()) for k, v in record.items()}


def _payload(snap: Snapshot) -> dict:
    return {"state": snap.state, "round": snap.round, "rounds_trained": snap.rounds_trained}


def atomic_torch_save(obj: object, path: Path) -> None:
    """Write to a temp file and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
