"""Shared-id embeddings: fields whose ids mean the same in every scenario, hashed into one table.

A dataset declares such fields (``dataset.schema.shared_fields``); with
``strategy.shared_embeddings.enabled`` each of them gets one table of
``buckets + 1`` rows that every node holds identically. No node ever sends its
vocabulary: every node hashes its own kept raw ids with the same seeded 64-bit
mix of (field name, raw id), so the same raw id lands in the same row on every
node, and the store's encoding (local index, 0 = OOV) stays as it is. The model
looks a shared field up as ``table[bucket_map[local index]]``.

Row 0 is the out-of-vocabulary row (every node's OOV index 0 maps there); a raw
id goes to ``1 + hash mod buckets``. Two raw ids of one field may share a row (a
collision): for n ids in B buckets the expected share of ids that share their row
with another is ``1 - (1 - 1/B)^(n - 1)`` (``expected_collision_rate``; README,
"Shared-id embeddings").

A node trains the whole table, but answers with the rows that this round's
trained batches looked up only, with how many trained rows used each
(``touched_upload``); the server replaces each touched row by the count-weighted
mean over the nodes that touched it and sends the table back whole.

With ``upload_cap`` a node sends rows worth at most that share of its other tensors'
bytes (``capped_upload``): the rows whose change is largest go, and the change of
every other row stays on the node (``Pending``; error feedback, as in Deep Gradient
Compression): the node adds it back onto the table it receives next round, keeps
training on it, and sends it, with the counts gathered meanwhile, once it ranks.
Nothing a node learned is dropped; some of it arrives later.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .template import DELTA_PART, TOUCHED_PARTS, VALUE_ENCODINGS, shared_table_name, touched_names, unsigned_for

OOV_ROW = 0  # the row every node's out-of-vocabulary index (0) maps to

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al.): a bijective 64-bit mix whose every output bit
    depends on every input bit, so consecutive raw ids spread over all buckets."""
    z = np.asarray(z, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def field_key(field: str, seed: int) -> np.uint64:
    """A field's 64-bit hash key: crc32 of its name in the high word, mixed with the seed, so
    that the same raw id of two fields lands in unrelated rows."""
    word = (np.uint64(zlib.crc32(field.encode("utf-8"))) << np.uint64(32)) ^ np.uint64(seed % 2**64)
    return _splitmix64(np.array([word], dtype=np.uint64))[0]


def bucket_of(field: str, raw_ids: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """Rows (int64, 1..buckets) of raw ids of ``field``: identical on every node."""
    if buckets < 1:
        raise ValueError(f"strategy.shared_embeddings.buckets={buckets}: expected an integer >= 1")
    raw = np.asarray(raw_ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        h = _splitmix64(raw + field_key(field, seed))
    return (h % np.uint64(buckets)).astype(np.int64) + 1


def bucket_map(field: str, vocabulary: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """Local index -> row: index 0 (OOV) -> OOV_ROW, index i + 1 (raw id vocabulary[i]) -> its bucket."""
    out = np.empty(len(vocabulary) + 1, dtype=np.int64)
    out[0] = OOV_ROW
    out[1:] = bucket_of(field, vocabulary, buckets, seed)
    return out


def expected_collision_rate(n_ids: int, buckets: int) -> float:
    """Expected share of n ids hashed uniformly into ``buckets`` rows that share their row."""
    return 0.0 if n_ids < 2 else float(1.0 - (1.0 - 1.0 / buckets) ** (n_ids - 1))


def measured_collision_rate(rows: np.ndarray) -> float:
    """Share of ids (one row each) whose row holds at least one other id."""
    rows = np.asarray(rows)
    if len(rows) == 0:
        return 0.0
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    return float(np.mean(counts[inverse] > 1))


@dataclass(frozen=True)
class SharedEmbeddings:
    """``strategy.shared_embeddings``: the switch, the bucket count and the hash seed."""

    enabled: bool = False
    buckets: int = 0
    hash_seed: int = 0
    values: str = VALUE_ENCODINGS[0]  # how touched rows travel: float32 values or float16 deltas
    upload_cap: float | None = None  # rows' bytes at most this share of the other uploaded bytes; None: all
    residual: bool = False  # a local row per id added to its shared row (pfms_client.mmoe)

    @classmethod
    def from_strategy(cls, strategy: Mapping[str, Any]) -> "SharedEmbeddings":
        node = strategy.get("shared_embeddings")
        if node is None or not bool(node["enabled"]):
            return cls()
        cap = node.get("upload_cap")
        out = cls(True, int(node["buckets"]), int(node["hash_seed"]), str(node.get("values", VALUE_ENCODINGS[0])),
                  None if cap is None else float(cap), bool(node.get("residual", False)))
        if out.buckets < 1:
            raise ValueError(f"strategy.shared_embeddings.buckets={out.buckets}: expected an integer >= 1")
        if out.values not in VALUE_ENCODINGS:
            raise ValueError(f"strategy.shared_embeddings.values={out.values!r}: expected one of "
                             f"{list(VALUE_ENCODINGS)}")
        if out.upload_cap is not None and not (out.upload_cap > 0 and math.isfinite(out.upload_cap)):
            raise ValueError(f"strategy.shared_embeddings.upload_cap={cap}: expected a number > 0 or null")
        return out

    @property
    def sends_deltas(self) -> bool:
        return self.enabled and self.values == "float16-delta"

    @property
    def capped(self) -> bool:
        return self.enabled and self.upload_cap is not None

    @property
    def rows(self) -> int:
        """Rows of each shared table: the buckets plus the OOV row."""
        return self.buckets + 1

    def bucket_maps(self, categorical: Sequence[str], shared_fields: Sequence[str],
                    vocabularies: Sequence[np.ndarray] | None) -> dict[str, np.ndarray]:
        """Field -> bucket map (local index -> row), for the declared fields; {} when off."""
        if not self.enabled:
            return {}
        if not shared_fields:
            raise ValueError("strategy.shared_embeddings.enabled=true, but the dataset declares no "
                             "schema.shared_fields")
        if vocabularies is None:
            raise ValueError("shared embeddings need the scenario's vocabularies (ScenarioData.vocabularies)")
        position = {f: i for i, f in enumerate(categorical)}
        missing = [f for f in shared_fields if f not in position]
        if missing:
            raise ValueError(f"schema.shared_fields: {missing} not among the categorical fields {list(categorical)}")
        return {f: bucket_map(f, vocabularies[position[f]], self.buckets, self.hash_seed) for f in shared_fields}


def _numpy(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def touched_upload(tables: Mapping[str, Any], counts: Mapping[str, Any],
                   received: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """A node's answer for its shared tables: per table, the rows trained batches looked up
    (``counts`` > 0), their counts and their values; rows nobody looked up stay home.

    ``tables``: tensor name (``shared_embedding.<field>.weight``) -> table [R, d];
    ``counts``: the same names -> looked-up rows per row [R] (integers >= 0).

    Rows go as ``unsigned_for(R - 1)``, counts as ``unsigned_for(largest count)``: exact,
    and a quarter of int64's bytes for default tables (pfms_client.template).

    ``received``: the same names -> the tables as the server sent them this round. Given,
    each touched row goes as its change (``deltas``, float16) instead of its value
    (``strategy.shared_embeddings.values: float16-delta``). A round's change is small,
    so float16's 11 significant bits lose about 5e-4 of it, not of the value."""
    out: dict[str, np.ndarray] = {}
    for name, table in tables.items():
        weight, count = _numpy(table), _numpy(counts[name])
        rows = np.flatnonzero(count > 0)
        if received is None:
            out |= _encode(name, len(count), rows, count[rows], values=weight[rows])
        else:
            out |= _encode(name, len(count), rows, count[rows],
                           change=weight[rows].astype(np.float64) - _numpy(received[name])[rows])
    return out


def _encode(name: str, size: int, rows: np.ndarray, counts: np.ndarray, *, values: np.ndarray | None = None,
            change: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One table's parts: rows and counts in their smallest exact unsigned types, then either
    the rows' values or their change as float16 (``.deltas``)."""
    parts = touched_names(name)
    out = {parts["rows"]: np.asarray(rows).astype(unsigned_for(size - 1)),
           parts["counts"]: np.asarray(counts).astype(unsigned_for(int(counts.max()) if len(counts) else 0))}
    if change is None:
        out[parts["values"]] = np.ascontiguousarray(values)
    else:
        out[parts[DELTA_PART]] = np.asarray(change).astype(np.float16)
    return out


@dataclass(frozen=True)
class Pending:
    """One table's rows whose change this node has not sent yet: row numbers (int64,
    ascending), how many trained rows looked each up since it was last sent (int64 >= 1),
    and the change itself (float32 [k, d]: the row on this node minus the row as received)."""

    rows: np.ndarray
    counts: np.ndarray
    change: np.ndarray

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """Named arrays for the node's local state (``pfms_client.state.LocalState``)."""
        return {f"{name}:rows": self.rows, f"{name}:counts": self.counts, f"{name}:change": self.change}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], name: str) -> "Pending | None":
        if f"{name}:rows" not in arrays:
            return None
        return cls(*(_numpy(arrays[f"{name}:{p}"]) for p in ("rows", "counts", "change")))


def add_pending(tables: Mapping[str, Any], pending: Mapping[str, Pending]) -> None:
    """Add each kept change back onto the table just received (torch tensors, in place), so
    that the node trains and evaluates on its rows as it left them."""
    import torch

    with torch.no_grad():
        for name, kept in pending.items():
            if len(kept.rows):
                rows = torch.as_tensor(kept.rows, dtype=torch.long)
                tables[name].index_add_(0, rows, torch.as_tensor(kept.change, dtype=tables[name].dtype))


def capped_upload(tables: Mapping[str, Any], counts: Mapping[str, Any], received: Mapping[str, Any],
                  pending: Mapping[str, Pending], budget_bytes: float, *,
                  deltas: bool) -> tuple[dict[str, np.ndarray], dict[str, Pending]]:
    """(the upload, what stays pending) when the rows may cost at most ``budget_bytes``.

    A row is due when this round's trained batches looked it up or an earlier round left
    its change pending; its count adds both. Due rows go in the order of their change's
    L2 norm, largest first, across all tables (ties: table name, then row), as many as
    fit the budget at the widest row's bytes; the others stay pending with their change
    and count. ``received``: the tables as the server sent them, before the pending
    change was added back."""
    due: dict[str, Pending] = {}
    for name in sorted(tables):
        weight, count = _numpy(tables[name]), _numpy(counts[name]).astype(np.int64)
        total = count.copy()
        kept = pending.get(name)
        if kept is not None and len(kept.rows):
            total[kept.rows] += kept.counts
        rows = np.flatnonzero(total > 0)
        change = (weight[rows].astype(np.float64) - _numpy(received[name])[rows]).astype(np.float32)
        due[name] = Pending(rows, total[rows], change)
    if not due:
        return {}, {}
    dim = max(d.change.shape[1] for d in due.values())
    largest = max((int(d.counts.max()) for d in due.values() if len(d.counts)), default=0)
    row_bytes = (max(np.dtype(unsigned_for(len(_numpy(counts[n])) - 1)).itemsize for n in due)
                 + np.dtype(unsigned_for(largest)).itemsize
                 + dim * (2 if deltas else max(_numpy(tables[n]).itemsize for n in due)))
    norms = np.concatenate([np.linalg.norm(d.change.astype(np.float64), axis=1) for d in due.values()])
    chosen = np.zeros(len(norms), dtype=bool)
    chosen[np.argsort(-norms, kind="stable")[:max(0, int(budget_bytes // row_bytes))]] = True
    upload: dict[str, np.ndarray] = {}
    left: dict[str, Pending] = {}
    start = 0
    for name, d in due.items():
        go = chosen[start:start + len(d.rows)]
        start += len(d.rows)
        size = len(_numpy(counts[name]))
        if deltas:
            upload |= _encode(name, size, d.rows[go], d.counts[go], change=d.change[go])
        else:
            upload |= _encode(name, size, d.rows[go], d.counts[go], values=_numpy(tables[name])[d.rows[go]])
        left[name] = Pending(d.rows[~go], d.counts[~go], d.change[~go])
    return upload, left


__all__ = ["OOV_ROW", "Pending", "SharedEmbeddings", "TOUCHED_PARTS", "add_pending", "bucket_map", "bucket_of",
           "capped_upload", "expected_collision_rate", "field_key", "measured_collision_rate", "shared_table_name",
           "touched_upload"]
