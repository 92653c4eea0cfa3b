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
"""

from __future__ import annotations

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

    @classmethod
    def from_strategy(cls, strategy: Mapping[str, Any]) -> "SharedEmbeddings":
        node = strategy.get("shared_embeddings")
        if node is None or not bool(node["enabled"]):
            return cls()
        out = cls(True, int(node["buckets"]), int(node["hash_seed"]), str(node.get("values", VALUE_ENCODINGS[0])))
        if out.buckets < 1:
            raise ValueError(f"strategy.shared_embeddings.buckets={out.buckets}: expected an integer >= 1")
        if out.values not in VALUE_ENCODINGS:
            raise ValueError(f"strategy.shared_embeddings.values={out.values!r}: expected one of "
                             f"{list(VALUE_ENCODINGS)}")
        return out

    @property
    def sends_deltas(self) -> bool:
        return self.enabled and self.values == "float16-delta"

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
        touched = count[rows]
        parts = touched_names(name)
        out[parts["rows"]] = rows.astype(unsigned_for(len(count) - 1))
        out[parts["counts"]] = touched.astype(unsigned_for(int(touched.max()) if len(touched) else 0))
        if received is None:
            out[parts["values"]] = np.ascontiguousarray(weight[rows])
        else:
            change = weight[rows].astype(np.float64) - _numpy(received[name])[rows]
            out[parts[DELTA_PART]] = change.astype(np.float16)
    return out


__all__ = ["OOV_ROW", "SharedEmbeddings", "TOUCHED_PARTS", "bucket_map", "bucket_of", "expected_collision_rate",
           "field_key", "measured_collision_rate", "shared_table_name", "touched_upload"]
