"""A scenario's trained model as a run folder keeps it, and loading it back to score rows.

Training encodes rows with the scenario's prepared store (pfms_client.data.store): a
vocabulary per categorical field and a numeric transform. A checkpoint alone is useless
without them, and wrong with another store's: an id's index in one vocabulary is another
id in the next. So next to ``checkpoints/<scenario>.pt`` the client writes
``checkpoints/<scenario>.encoding/``: ``encoding.json`` (the schema, the numeric transform
with its mean/std, field_dims, task names) and ``vocab/<field>.npy`` (a copy of the
store's vocabulary: the run folder is self-contained, a serving team needs nothing else).
The checkpoint records a fingerprint of each part (schema, numeric transform, every
field's vocabulary); ``load_trained`` recomputes them from the files and refuses a
checkpoint whose parts differ, naming the part.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.schema import Constraint, DatasetSchema, TaskSpec
from .data.settings import DatasetSettings
from .data.store import VOCAB_DIR, read_manifest, read_vocab, schema_record
from .template import is_shared_table

ENCODING_FORMAT = 1
ENCODING_FILE = "encoding.json"
CHECKPOINTS_DIR = "checkpoints"


class TrainedModelError(ValueError):
    """A run folder, checkpoint or encoding that cannot be used (one line for the user)."""


def encoding_dir(checkpoint: Path) -> Path:
    """``checkpoints/NL.pt`` -> ``checkpoints/NL.encoding``."""
    return checkpoint.with_name(checkpoint.stem + ".encoding")


def schema_from_record(record: dict[str, Any]) -> DatasetSchema:
    return DatasetSchema(
        categorical=tuple(record["categorical"]),
        numerical=tuple(record["numerical"]),
        labels=tuple(record["labels"]),
        tasks=tuple(TaskSpec(name, tuple(all_of)) for name, all_of in record["tasks"]),
        constraints=tuple(Constraint(label, requires) for label, requires in record["constraints"]),
        id_columns=tuple(record["id_columns"]),
        ignore_columns=tuple(record["ignore_columns"]),
    )


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint(schema: dict[str, Any], numeric: dict[str, Any], vocabs: dict[str, np.ndarray]) -> dict[str, Any]:
    """One hash per part, so a mismatch can say which part differs."""
    return {
        "schema": _digest(json.dumps(schema, sort_keys=True).encode()),
        "numeric": _digest(json.dumps(numeric, sort_keys=True).encode()),
        "vocab": {f: _digest(np.ascontiguousarray(v, dtype=np.int64).tobytes()) for f, v in vocabs.items()},
    }


def write_encoding(store_folder: Path, settings: DatasetSettings, scenario: str, dest: Path) -> dict[str, Any]:
    """Copy what scoring needs from the scenario's store into ``dest`` (replaced atomically);
    returns the fingerprint the checkpoint records."""
    manifest = read_manifest(store_folder)
    schema = schema_record(settings.schema)
    numeric = {"transform": settings.numeric_transform, "scaler": manifest["numeric_scaler"]}
    vocabs = {f: read_vocab(store_folder, f) for f in settings.schema.categorical}
    prints = fingerprint(schema, numeric, vocabs)
    record = {
        "format": ENCODING_FORMAT,
        "dataset": settings.name,
        "scenario": scenario,
        "schema": schema,
        "numeric": numeric,
        "field_dims": [int(d) for d in manifest["field_dims"]],
        "task_names": list(settings.schema.task_names),
        "oov_index": 0,
        "fingerprint": prints,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / VOCAB_DIR).mkdir()
        for field in settings.schema.categorical:
            shutil.copyfile(store_folder / VOCAB_DIR / f"{field}.npy", tmp / VOCAB_DIR / f"{field}.npy")
        (tmp / ENCODING_FILE).write_text(json.dumps(record, indent=1))
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return prints


@dataclass(frozen=True)
class Encoding:
    """How raw rows become model inputs: the schema, vocabularies and numeric transform."""

    folder: Path
    schema: DatasetSchema
    vocabs: list[np.ndarray]  # schema.categorical order
    mean: np.ndarray | None  # float64 [D], None = numericals used as read
    std: np.ndarray | None
    field_dims: list[int]
    task_names: list[str]
    record: dict[str, Any]

    def encode(self, cat_raw: np.ndarray, num: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw ids int64 [n, F] and float32 numericals [n, D] -> (x_cat int64, x_num float32),
        exactly as the store encoded its rows (store.encode_ids; scaling in float64)."""
        from .data.store import encode_ids

        x_cat = np.empty(cat_raw.shape, dtype=np.int64)
        for f, vocab in enumerate(self.vocabs):
            x_cat[:, f] = encode_ids(vocab, cat_raw[:, f])
        if self.mean is None:
            x_num = np.ascontiguousarray(num, dtype=np.float32)
        else:
            x_num = ((num.astype(np.float64) - self.mean) / self.std).astype(np.float32)
        return x_cat, x_num


def read_encoding(folder: Path) -> Encoding:
    """The encoding folder, its files checked against the fingerprint it records."""
    path = folder / ENCODING_FILE
    if not path.is_file():
        raise TrainedModelError(f"{path}: not found (a checkpoint from before scoring existed? "
                                "run again to write the encoding next to the checkpoint)")
    record = json.loads(path.read_text())
    if record.get("format") != ENCODING_FORMAT:
        raise TrainedModelError(f"{path}: encoding format {record.get('format')!r}, expected {ENCODING_FORMAT}")
    schema = schema_from_record(record["schema"])
    vocabs = []
    for field in schema.categorical:
        vpath = folder / VOCAB_DIR / f"{field}.npy"
        if not vpath.is_file():
            raise TrainedModelError(f"{vpath}: vocabulary of field '{field}' not found")
        vocabs.append(np.load(vpath))
    scaler = record["numeric"]["scaler"]
    mean = None if scaler is None else np.asarray(scaler["mean"], dtype=np.float64)
    std = None if scaler is None else np.asarray(scaler["std"], dtype=np.float64)
    enc = Encoding(folder, schema, vocabs, mean, std, [int(d) for d in record["field_dims"]],
                   list(record["task_names"]), record)
    actual = fingerprint(record["schema"], record["numeric"], dict(zip(schema.categorical, vocabs)))
    differs = fingerprint_differences(record["fingerprint"], actual)
    if differs:
        raise TrainedModelError(f"{folder}: its files do not match its own fingerprint ({differs})")
    for field, vocab, dim in zip(schema.categorical, vocabs, enc.field_dims, strict=True):
        if len(vocab) + 1 != dim:
            raise TrainedModelError(f"{folder}: vocabulary of field '{field}' has {len(vocab)} ids, "
                                    f"field_dims says {dim - 1}")
    return enc


def fingerprint_differences(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    """'' when equal, else which parts differ, e.g. 'vocabulary of field categorical_3'."""
    parts = []
    if expected.get("schema") != actual["schema"]:
        parts.append("schema (columns, labels or tasks)")
    if expected.get("numeric") != actual["numeric"]:
        parts.append("numeric transform")
    want, have = expected.get("vocab") or {}, actual["vocab"]
    for field in sorted(set(want) | set(have)):
        if want.get(field) != have.get(field):
            parts.append(f"vocabulary of field {field}")
    if len(parts) > 3:
        parts = parts[:3] + [f"{len(parts) - 3} more"]
    return ", ".join(parts)


@dataclass
class TrainedModel:
    """A scenario's personalized model, in eval mode, with the encoding it was trained with."""

    scenario: str
    model: Any  # pfms_client.mmoe.MMoE
    encoding: Encoding
    config: dict[str, Any]  # the run's resolved config
    checkpoint: Path


def checkpoint_path(run_dir: Path, scenario: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainedModelError(f"{run_dir}: run folder not found")
    path = run_dir / CHECKPOINTS_DIR / f"{scenario}.pt"
    if not path.is_file():
        have = scenarios_with_checkpoints(run_dir)
        raise TrainedModelError(f"{path}: no checkpoint for scenario {scenario!r} in this run "
                                f"(scenarios with one: {', '.join(have) or 'none'})")
    return path


def scenarios_with_checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.stem for p in (Path(run_dir) / CHECKPOINTS_DIR).glob("*.pt"))


def load_trained(run_dir: Path, scenario: str) -> TrainedModel:
    """The scenario's checkpoint with its encoding; refuses any mismatch between the two."""
    import torch

    from .mmoe import build_model

    path = checkpoint_path(run_dir, scenario)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which, not torch's traceback
        raise TrainedModelError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise TrainedModelError(f"{path}: not a pfms checkpoint (no state_dict)")
    if ckpt.get("scenario") != scenario:
        raise TrainedModelError(f"{path}: holds scenario {ckpt.get('scenario')!r}'s model, not {scenario!r}")
    shared = sorted(k for k in ckpt["state_dict"] if is_shared_table(k))
    if shared:  # the bucket maps would have to be rebuilt from the vocabularies: not done yet
        raise TrainedModelError(f"{path}: trained with strategy.shared_embeddings ({shared[0]}, ...); "
                                "pfms-score and --export cannot load shared-id tables yet")
    if "encoding_fingerprint" not in ckpt:
        raise TrainedModelError(f"{path}: records no encoding fingerprint (written before scoring existed); "
                                "run again to save the encoding with the checkpoint")
    enc = read_encoding(encoding_dir(path))
    differs = fingerprint_differences(ckpt["encoding_fingerprint"], enc.record["fingerprint"])
    if differs:
        raise TrainedModelError(f"{path}: trained with another encoding than {enc.folder}: {differs} differ")
    if (list(ckpt["field_dims"]) != enc.field_dims or list(ckpt["task_names"]) != enc.task_names
            or int(ckpt["num_numerical"]) != len(enc.schema.numerical)):
        raise TrainedModelError(f"{path}: field_dims, numerical columns or task names differ from {enc.folder}")
    cfg = ckpt["config"]
    model = build_model(cfg["model"], enc.field_dims, int(ckpt["num_numerical"]), len(enc.task_names),
                        int(cfg.get("seed", 0)))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise TrainedModelError(f"{path}: tensors do not fit the model its config builds: "
                                f"{str(exc).splitlines()[0]}") from None
    model.eval()
    return TrainedModel(scenario, model, enc, cfg, path)
