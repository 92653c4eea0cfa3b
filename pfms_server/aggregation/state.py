"""The server's state: every scenario's personalized tensors, alpha and beta.

Keyed by scenario id (what clients report), never by Flower node id. Saved
atomically after each round (arrays.npz + state.json) so a run can be resumed and
a crash mid-write never corrupts the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pfms_client.template import Group, classify

from .personalize import HyperParam

Arrays = dict[str, np.ndarray]
# Groups the server keeps one copy of for every scenario: G, and the shared-id tables.
ONE_COPY = (Group.GLOBAL, Group.SHARED_EMBEDDING)


@dataclass
class ScenarioState:
    arrays: Arrays  # this scenario's own tensors as sent last (PF-MSMTrec: S and towers, theta_k(sent))
    alpha: HyperParam | None = None  # PF-MSMTrec only
    alpha_dir: Arrays = field(default_factory=dict)  # expert unit -> d that built `arrays`
    beta: dict[str, HyperParam] = field(default_factory=dict)  # tower layer -> beta
    beta_dir: Arrays = field(default_factory=dict)  # tower tensor -> u that built `arrays`
    num_examples: int = 0
    # strategy.shared_embeddings.upload_cap: per shared table, the round this scenario last
    # sent each row and its uses per round then (aggregation.embeddings.touched_row_rate_mean)
    row_sent: Arrays = field(default_factory=dict)
    row_rate: Arrays = field(default_factory=dict)


@dataclass
class ServerState:
    round: int = 0
    init: Arrays | None = None  # the common initialisation of every uploaded tensor
    global_arrays: Arrays = field(default_factory=dict)  # G (one copy for everybody)
    scenarios: dict[str, ScenarioState] = field(default_factory=dict)

    def set_init(self, arrays: Arrays) -> None:
        self.init = {k: np.array(v, copy=True) for k, v in arrays.items()}
        self.global_arrays = {k: v.copy() for k, v in self.init.items() if classify(k).group in ONE_COPY}

    def own(self, name: str) -> "ScenarioState":
        """The scenario's entry with no personalized tensors yet (rules other than PF-MSMTrec)."""
        return self.scenarios.setdefault(name, ScenarioState(arrays={}))

    def scenario(self, name: str, alpha_init: np.ndarray, beta_init: float) -> ScenarioState:
        """The scenario's state, created from the common initialisation on first use."""
        if name not in self.scenarios:
            if self.init is None:
                raise RuntimeError("server state has no initial tensors yet")
            personal = {k: v.copy() for k, v in self.init.items() if classify(k).group not in ONE_COPY}
            layers = {classify(k).layer for k in personal if classify(k).group is Group.TOWER}
            self.scenarios[name] = ScenarioState(
                arrays=personal,
                alpha=HyperParam(np.array(alpha_init, dtype=np.float64)),
                beta={layer: HyperParam(np.array(beta_init, dtype=np.float64)) for layer in sorted(layers)},
            )
        return self.scenarios[name]

    def arrays_for(self, name: str) -> Arrays:
        """What a node of this scenario receives: the initialisation, overridden by the
        shared copy, overridden by the scenario's own (personalized) tensors."""
        own = self.scenarios[name].arrays if name in self.scenarios else {}
        return {**(self.init or {}), **self.global_arrays, **own}

    # -- persistence -------------------------------------------------------------
    def save(self, directory: Path) -> None:
        arrays: Arrays = {}
        meta: dict = {"round": self.round, "scenarios": {}}
        for k, v in (self.init or {}).items():
            arrays[f"init/{k}"] = v
        for k, v in self.global_arrays.items():
            arrays[f"global/{k}"] = v
        for name, sc in self.scenarios.items():
            for k, v in sc.arrays.items():
                arrays[f"personal/{name}/{k}"] = v
            for k, v in sc.alpha_dir.items():
                arrays[f"alpha_dir/{name}/{k}"] = v
            for k, v in sc.beta_dir.items():
                arrays[f"beta_dir/{name}/{k}"] = v
            for k, v in sc.row_sent.items():
                arrays[f"row_sent/{name}/{k}"] = v
            for k, v in sc.row_rate.items():
                arrays[f"row_rate/{name}/{k}"] = v
            meta["scenarios"][name] = {
                "alpha": sc.alpha.to_dict() if sc.alpha is not None else None,
                "beta": {layer: hp.to_dict() for layer, hp in sc.beta.items()},
                "num_examples": sc.num_examples,
            }
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        try:
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            old = directory.with_name(directory.name + ".old")
            if directory.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: Path) -> "ServerState":
        meta = json.loads((directory / "state.json").read_text())
        with np.load(directory / "arrays.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        state = cls(round=int(meta["round"]))

        def section(prefix: str) -> Arrays:
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        state.init = section("init/") or None
        state.global_arrays = section("global/")
        for name, sc in meta["scenarios"].items():
            state.scenarios[name] = ScenarioState(
                arrays=section(f"personal/{name}/"),
                alpha=HyperParam.from_dict(sc["alpha"]) if sc["alpha"] is not None else None,
                alpha_dir=section(f"alpha_dir/{name}/"),
                beta={layer: HyperParam.from_dict(d) for layer, d in sc["beta"].items()},
                beta_dir=section(f"beta_dir/{name}/"),
                num_examples=int(sc["num_examples"]),
                row_sent=section(f"row_sent/{name}/"),
                row_rate=section(f"row_rate/{name}/"),
            )
        return state
