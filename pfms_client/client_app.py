"""Flower ClientApp: one business scenario's MMoE trainer.

The node serves the scenario named in its node config (``scenario``) or, in a
simulation, ``dataset.scenarios[partition-id]``. It receives only the uploadable
tensors (G, S and towers), keeps everything else in its LocalState, and replies
with the uploadable non-BN tensors, its sample count and metrics.
"""

from __future__ import annotations

import time

from .timing import Stopwatch, process_age_s

_STARTED_S = process_age_s()  # how long this process had run when this module began to import
_IMPORT_T0 = time.perf_counter()

import json  # noqa: E402  (the imports below are what time.import measures)
import zlib  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .config import load_config  # noqa: E402
from .data import ScenarioData, open_scenario  # noqa: E402
from .mmoe import MMoE, build_model  # noqa: E402
from .state import LocalState, atomic_torch_save  # noqa: E402
from .shared_embedding import Pending, SharedEmbeddings, add_pending, capped_upload, touched_upload  # noqa: E402
from .template import is_shared_table, shared_parts, uploaded_names  # noqa: E402
from .threads import choose as choose_threads, ray_actor_cpus  # noqa: E402
from .local_update import client_mode, ditto_personal_update, fedrep_update, train_config  # noqa: E402
from .trainer import evaluate, train_local  # noqa: E402
from .wire import WireError, pack, unpack  # noqa: E402

app = ClientApp()
SPLITS = ("train", "val", "test")

_DATA: dict[str, ScenarioData] = {}
# Process start and imports are paid once per process: reported by its first message only.
_STARTUP = {"start": _STARTED_S, "import": time.perf_counter() - _IMPORT_T0}


class UpdateError(ValueError):
    """A received tensor set that does not fit this client's model."""


def run_config(context: Context) -> DictConfig:
    """The run's config; load_config composes it once per process and reuses it."""
    return load_config(str(context.run_config.get("overrides", "")))


def scenario_of(context: Context, cfg: DictConfig) -> str:
    """The scenario this node serves: node config ``scenario`` or the partition id."""
    node = context.node_config
    scenarios = list(cfg.dataset.scenarios)
    if "scenario" in node:
        name = str(node["scenario"])
        if name not in scenarios:
            raise ValueError(f"node scenario {name!r} is not in dataset.scenarios {scenarios}")
        return name
    if "partition-id" in node:
        pid, parts = int(node["partition-id"]), int(node.get("num-partitions", len(scenarios)))
        if parts != len(scenarios):
            raise ValueError(
                f"the federation has {parts} SuperNodes but dataset.scenarios lists {len(scenarios)}: "
                f"run with --federation-config 'num-supernodes={len(scenarios)}'"
            )
        return scenarios[pid]
    raise ValueError("node config needs 'scenario' (deployment) or 'partition-id' (simulation)")


def dataset_config(context: Context, cfg: DictConfig) -> DictConfig:
    """cfg.dataset, with a deployed node's own data path; read-only, made once per process for
    each (config, data path): an OmegaConf round trip cost ~36 ms a message, paid by every
    in-process ClientApp message of a simulation or a test."""
    path = str(context.node_config["data-path"]) if "data-path" in context.node_config else None
    memo = (id(cfg), path)
    if memo not in _DATASET_CONFIGS:  # the entry keeps cfg alive, so its id names no other config
        ds = OmegaConf.to_container(cfg.dataset, resolve=True)
        if path is not None:  # a deployed node reads its own data, never generates it
            ds["root"], ds["generator"] = path, None
        ds_cfg = OmegaConf.create(ds)
        OmegaConf.set_readonly(ds_cfg, True)
        if len(_DATASET_CONFIGS) >= 64:  # a long pfms-compare process meets many configs
            _DATASET_CONFIGS.pop(next(iter(_DATASET_CONFIGS)))
        _DATASET_CONFIGS[memo] = (cfg, ds_cfg, json.dumps(ds, sort_keys=True))
    return _DATASET_CONFIGS[memo][1]


# (the config it came from, kept alive so its id stays unique; the dataset config; its JSON)
_DATASET_CONFIGS: dict[tuple[int, str | None], tuple[DictConfig, DictConfig, str]] = {}


def _config_json(ds_cfg: DictConfig) -> str:
    made = next((m[2] for m in _DATASET_CONFIGS.values() if m[1] is ds_cfg), None)
    return made if made is not None else json.dumps(OmegaConf.to_container(ds_cfg), sort_keys=True)


def scenario_data(ds_cfg: DictConfig, scenario: str, in_memory_max_rows: int) -> ScenarioData:
    """The scenario's prepared store (prepared on first use), mapped; a split of at most
    ``in_memory_max_rows`` rows is read into memory. Once per process; later messages reuse it."""
    key = json.dumps([_config_json(ds_cfg), scenario, in_memory_max_rows])
    if key not in _DATA:
        data = open_scenario(ds_cfg, scenario)
        small = {s: getattr(data, s).in_memory() for s in SPLITS if len(getattr(data, s)) <= in_memory_max_rows}
        _DATA[key] = replace(data, **small)
    return _DATA[key]


def torch_threads(context: Context, cfg: DictConfig) -> int | None:
    """Set torch's intra-op threads: ``train.num_threads``, else the node's share of the host
    (node config ``threads``, set by pfms-client; see pfms_client.threads), else in Flower's
    simulation the CPUs Ray gave this ClientApp's actor; None = torch's default."""
    node = context.node_config
    if cfg.train.num_threads:
        threads = int(cfg.train.num_threads)
    elif "threads" in node:
        registry = node.get("node-registry")
        threads, _ = choose_threads(node["threads"], node.get("nodes-per-host", 0),
                                    Path(str(registry)) if registry else None)
    elif (cpus := ray_actor_cpus()) is not None:
        threads = cpus
    else:
        return None
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


class Session:
    """One message's view of the scenario: config, data, model with local state.

    ``watch`` collects where the message's seconds went (``time.*`` in the reply's
    metrics: process start and imports on a process's first message, config, data,
    model, then train and evaluate as the handler measures them)."""

    def __init__(self, context: Context, msg: Message | None = None) -> None:
        self.watch = Stopwatch()
        if _STARTUP:
            self.watch.seconds.update(_STARTUP)
            _STARTUP.clear()
        with self.watch.time("config"):
            self.cfg = run_config(context)
        self.threads = torch_threads(context, self.cfg)
        self.scenario = scenario_of(context, self.cfg)
        with self.watch.time("data"):
            self.data = scenario_data(dataset_config(context, self.cfg), self.scenario,
                                      int(self.cfg.train.in_memory_max_rows))
        strat = self.cfg.strategy
        self.shared = SharedEmbeddings.from_strategy(strat)
        with self.watch.time("model"):
            self.model: MMoE = self.new_model()
        self.upload = uploaded_names(self.model.state_dict().keys(), fedbn=strat.fedbn, share=shared_parts(strat))
        state_dir = context.node_config.get("state-dir")
        if state_dir:  # per run; the run key stays the same when the server resumes a run
            config = msg.content.get("config") if msg is not None else None
            run_key = config.get("run-key") if config is not None else None
            state_dir = str(Path(str(state_dir)) / str(run_key or context.run_id))
        self.local = LocalState(context.state, self.scenario, state_dir)
        self._store, self._state_dir = context.state, state_dir
        self.received: dict[str, torch.Tensor] | None = None  # the server's tensors of this message
        # strategy.shared_embeddings.upload_cap: the shared rows' changes not sent yet, per round;
        # ``kept`` is what add_pending loaded for this message (trained_upload goes on from it)
        self.pending = LocalState(context.state, f"{self.scenario}+pending", state_dir)
        self.kept: dict[str, Pending] | None = None

    def shared_fields(self) -> tuple[str, ...]:
        """dataset.schema.shared_fields, as names (the YAML may give a {prefix, start, count} range)."""
        from .data.schema import DatasetSchema

        return DatasetSchema.from_config(self.cfg.dataset).shared_fields

    def new_model(self) -> MMoE:
        maps = self.shared.bucket_maps(self.data.categorical_names, self.shared_fields(), self.data.vocabularies)
        extra = {"shared_buckets": maps, "shared_rows": self.shared.rows, "shared_residual": self.shared.residual,
                 "field_names": self.data.categorical_names} if maps else {}
        return build_model(
            self.cfg.model, self.data.field_dims, self.data.num_numerical, len(self.data.task_names), self.cfg.seed,
            positive_rates=self.data.positive_rates, **extra,
        )

    def personal(self) -> LocalState:
        """Ditto's personal model, kept beside the scenario's global-model state."""
        return LocalState(self._store, f"{self.scenario}+personal", self._state_dir)

    def restore(self, before_round: int | None = None) -> None:
        """Local state from before ``before_round`` (a resumed server may resend a round)."""
        state = self.local.load(before_round)
        if state is not None:
            self.model.load_state_dict(state)

    def uploadable(self) -> dict[str, torch.Tensor]:
        sd = self.model.state_dict()
        return {n: sd[n] for n in self.upload}

    def add_pending(self, before_round: int | None) -> None:
        """With an upload cap, add the shared rows' changes this node has not sent yet (as of
        the round before ``before_round``) back onto the tables just received."""
        if not self.shared.capped:
            return
        kept = self.pending.load(before_round) or {}
        tables = {n: t for n, t in self.uploadable().items() if is_shared_table(n)}
        self.kept = {n: p for n in tables if (p := Pending.from_arrays(kept, n)) is not None}
        add_pending(tables, self.kept)

    def trained_upload(self, server_round: int) -> dict[str, Any]:
        """What a train reply carries: the uploadable tensors, each shared table replaced by
        the rows this round's trained batches looked up (with their counts); with an upload
        cap, by the rows whose change is largest, the rest kept for a later round."""
        own = self.uploadable()
        tables = {n: t for n, t in own.items() if is_shared_table(n)}
        if not tables:
            return own
        rest = {n: t for n, t in own.items() if n not in tables}
        counts = self.model.touched_counts()
        if (self.shared.sends_deltas or self.shared.capped) and self.received is None:
            raise UpdateError(f"scenario {self.scenario}: shared rows' changes without the tables received")
        if not self.shared.capped:
            sent = {n: self.received[n] for n in tables} if self.shared.sends_deltas else None
            return {**rest, **touched_upload(tables, counts, sent)}
        if self.kept is None:
            raise UpdateError(f"scenario {self.scenario}: a capped upload before its pending rows were added back")
        budget = float(self.shared.upload_cap) * sum(t.numel() * t.element_size() for t in rest.values())
        rows, left = capped_upload(tables, counts, {n: self.received[n] for n in tables}, self.kept, budget,
                                   deltas=self.shared.sends_deltas)
        self.pending.save({k: torch.from_numpy(np.ascontiguousarray(v)) for n, p in left.items()
                           for k, v in p.arrays(n).items()}, server_round)
        return {**rest, **rows}

    def load_received(self, record: ArrayRecord) -> dict[str, torch.Tensor]:
        """Copy the server's tensors into the uploadable groups, after checking them."""
        own = self.uploadable()
        try:
            arrays = unpack(record)
        except WireError as exc:
            raise UpdateError(f"scenario {self.scenario}: received tensors cannot be read: {exc}") from None
        missing, extra = set(own) - set(arrays), set(arrays) - set(own)
        if missing or extra:
            raise UpdateError(
                f"scenario {self.scenario}: received tensors do not match the template "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]})"
            )
        received = {}
        for name, target in own.items():
            arr = arrays[name]
            if tuple(arr.shape) != tuple(target.shape):
                raise UpdateError(f"tensor {name}: shape {arr.shape}, expected {tuple(target.shape)}")
            if arr.dtype != target.numpy().dtype:
                raise UpdateError(f"tensor {name}: dtype {arr.dtype}, expected {target.numpy().dtype}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise UpdateError(f"tensor {name}: contains NaN or Inf")
            received[name] = torch.from_numpy(arr)  # unpack's copy
        with torch.no_grad():
            for name, value in received.items():
                own[name].copy_(value)
        self.received = received  # what float16-delta uploads are the change from
        return received

    def seed(self, server_round: int) -> int:
        return (int(self.cfg.seed) * 1_000_003 + server_round * 7919 + zlib.crc32(self.scenario.encode())) % 2**31


def to_record(tensors: dict[str, Any]) -> ArrayRecord:
    """Tensors (or numpy arrays: a shared table's touched rows) as one packed ArrayRecord (pfms_client.wire)."""
    return pack({k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()})


def meta(session: Session) -> ConfigRecord:
    return ConfigRecord({"scenario": session.scenario, "tasks": list(session.data.task_names)})


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report the scenario id; on request also the common initial uploadable tensors."""
    session = Session(context, msg)
    content = RecordDict({"meta": meta(session)})
    if bool(msg.content["config"].get("want-init", False)):
        content["arrays"] = to_record(session.uploadable())
    return Message(content, reply_to=msg)


def eval_metrics(session: Session, model: MMoE, splits: list[str]) -> dict[str, Any]:
    """``<split>.n`` and ``<split>.<task>.<auc|logloss>`` of ``model`` on each split."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown evaluation split(s) {unknown}; expected some of {list(SPLITS)}")
    metrics: dict[str, Any] = {}
    with session.watch.time("evaluate"):
        for split in splits:
            data = getattr(session.data, split)
            metrics[f"{split}.n"] = len(data)
            for task, m in evaluate(model, data, session.data.task_names, int(session.cfg.eval.batch_size),
                                    str(session.cfg.train.device)).items():
                metrics[f"{split}.{task}.auc"] = m["auc"]
                metrics[f"{split}.{task}.logloss"] = m["logloss"]
    return metrics


def received_model_metrics(session: Session, config: ConfigRecord, server_round: int) -> dict[str, Any]:
    """A train message may also ask to evaluate the model it brings, before training on it
    (``evaluate-splits``): that is the model the previous round ended with, so the metrics are
    the ones a separate evaluate message of that round would give, one message earlier.
    Ditto evaluates its personal model, as the evaluate message does."""
    if "evaluate-splits" not in config:
        return {}
    splits = [str(s) for s in config["evaluate-splits"]]
    model = session.model
    if client_mode(session.cfg.strategy) == "ditto":
        personal = session.personal().load(before_round=server_round or None)
        if personal is not None:
            model = session.new_model()
            model.load_state_dict(personal)
    return eval_metrics(session, model, splits)


@app.train()
def train(msg: Message, context: Context) -> Message:
    session = Session(context, msg)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    session.restore(before_round=server_round or None)
    anchor = session.load_received(msg.content["arrays"])
    session.add_pending(before_round=server_round or None)  # capped: received plus what it has not sent
    if session.shared.capped:  # the proximal anchor is the node's own rows
        now = session.model.state_dict()
        anchor = {n: now[n].clone() if is_shared_table(n) else t for n, t in anchor.items()}
    evaluated = received_model_metrics(session, config, server_round)
    mode = client_mode(session.cfg.strategy)
    tcfg = train_config(session.cfg)
    params = dict(session.model.named_parameters())
    anchor = {n: t for n, t in anchor.items() if n in params}  # the proximal term covers parameters only
    received = {k: v.clone() for k, v in session.model.state_dict().items()} if mode == "ditto" else None
    seed = session.seed(server_round)
    torch.manual_seed(seed)  # dropout masks differ per round and scenario
    with session.watch.time("train"):
        if mode == "fedrep":
            stats = fedrep_update(session.model, session.data.train, anchor, tcfg, seed,
                                  int(session.cfg.strategy.client.head_epochs))
        else:
            stats = train_local(session.model, session.data.train, anchor, tcfg, seed)
        session.local.save(session.model.state_dict(), server_round)
        if received is not None:  # Ditto: the personal model, started from the first global model it saw
            personal, model = session.personal(), session.new_model()
            model.load_state_dict(personal.load(before_round=server_round or None) or received)
            pstats = ditto_personal_update(model, session.data.train, anchor, tcfg, seed,
                                           float(session.cfg.strategy.client.lam))
            personal.save(model.state_dict(), server_round)
            stats["personal_bce"] = pstats["train_bce"]
    metrics: dict[str, Any] = {"num-examples": len(session.data.train), **stats, **evaluated,
                               **session.watch.metrics()}
    if session.threads is not None:
        metrics["threads"] = session.threads
    content = RecordDict(
        {"arrays": to_record(session.trained_upload(server_round)), "metrics": MetricRecord(metrics),
         "meta": meta(session)}
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    session = Session(context, msg)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    before = server_round + 1 if server_round else None
    personal = session.personal().load(before) if client_mode(session.cfg.strategy) == "ditto" else None
    if personal is not None:  # Ditto evaluates the personal model, not the received global one
        session.model.load_state_dict(personal)
    else:
        session.restore(before_round=before)
        session.load_received(msg.content["arrays"])
        session.add_pending(before_round=before)
    splits = [str(s) for s in config.get("splits", list(session.cfg.eval.splits))]
    metrics: dict[str, Any] = {"num-examples": len(session.data.val),
                               **eval_metrics(session, session.model, splits)}
    ckpt_dir = context.node_config.get("checkpoint-dir") or config.get("checkpoint-dir")
    if ckpt_dir:
        save_checkpoint(session, Path(str(ckpt_dir)) / f"{session.scenario}.pt",
                        dataset_config(context, session.cfg))
    metrics.update(session.watch.metrics())
    content = RecordDict({"metrics": MetricRecord(metrics), "meta": meta(session)})
    return Message(content, reply_to=msg)


def save_checkpoint(session: Session, path: Path, ds_cfg: DictConfig) -> None:
    """The scenario's full personalized model (server tensors plus its local ones), and next
    to it what scoring needs: the store's vocabularies, numeric transform and schema
    (``<scenario>.encoding/``, pfms_client.trained_model), whose fingerprint the checkpoint
    records so it is never used with another encoding."""
    from .data.settings import DatasetSettings
    from .data.store import store_path
    from .trained_model import encoding_dir, write_encoding

    settings = DatasetSettings.from_config(ds_cfg)
    prints = write_encoding(store_path(settings, session.scenario), settings, session.scenario, encoding_dir(path))
    atomic_torch_save(
        {
            "scenario": session.scenario,
            "state_dict": session.model.state_dict(),
            "field_dims": list(session.data.field_dims),
            "num_numerical": session.data.num_numerical,
            "task_names": list(session.data.task_names),
            "config": OmegaConf.to_container(session.cfg, resolve=True),
            "encoding_fingerprint": prints,
        },
        path,
    )
