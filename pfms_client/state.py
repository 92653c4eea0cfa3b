"""A client's persistent local model state, keyed by scenario id.

Flower rebuilds the ClientApp for every message, so everything that never leaves
the client (embeddings, gates, task experts, every BN tensor and statistic) lives
here between rounds: in Flower's ``context.state`` (survives within a run), and,
when a state directory is configured, on disk too so a restarted node rejoins
with its own state. The key is the scenario id, never the Flower node id.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

STATE_PREFIX = "pfms.local."
META_PREFIX = "pfms.meta."


class LocalState:
    """Load/save the full ``state_dict`` of one scenario's model."""

    def __init__(self, store: RecordDict, scenario: str, state_dir: str | None = None) -> None:
        self.store = store
        self.scenario = scenario
        self.path = Path(state_dir) / f"{scenario}.pt" if state_dir else None

    @property
    def rounds_trained(self) -> int:
        meta = self.store.get(META_PREFIX + self.scenario)
        return int(meta["rounds_trained"]) if meta is not None else 0

    def load(self) -> dict[str, torch.Tensor] | None:
        rec = self.store.get(STATE_PREFIX + self.scenario)
        if rec is not None:
            return {k: torch.from_numpy(v.numpy().copy()) for k, v in rec.items()}
        if self.path is not None and self.path.is_file():
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            self.store[META_PREFIX + self.scenario] = ConfigRecord(
                {"rounds_trained": int(payload["rounds_trained"])}
            )
            return payload["state"]
        return None

    def save(self, state: dict[str, torch.Tensor], rounds_trained: int) -> None:
        self.store[STATE_PREFIX + self.scenario] = ArrayRecord(
            {k: Array(np.require(v.detach().cpu().numpy(), requirements="C")) for k, v in state.items()}
        )
        self.store[META_PREFIX + self.scenario] = ConfigRecord({"rounds_trained": rounds_trained})
        if self.path is not None:
            atomic_torch_save({"state": state, "rounds_trained": rounds_trained}, self.path)


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
