"""Shared-id embedding tables: the count-weighted mean of the rows clients touched.

With ``strategy.shared_embeddings.enabled`` a field whose ids mean the same in
every scenario has one hashed table (``shared_embedding.<field>.weight``, see
``pfms_client.shared_embedding``) that every node receives whole. A node answers
with the rows its trained batches looked up only, with how many trained rows used
each; a row nobody touched carries no information this round, so it keeps its value,
and a touched row becomes the mean of the clients' values weighted by their counts
(a client that looked a row up 1000 times knows more about it than one that saw it once).

With ``strategy.shared_embeddings.upload_cap`` a node sends a row only when its
change ranks, with the change and the counts gathered since it last sent it. The mean
over this round's senders would then apply each node's change in full whenever it
arrives alone, so a row that four nodes train moves by about the sum of their changes
instead of their mean (measured: unstable AUC on the Tenrec schema).
``touched_row_rate_mean`` weighs each sent change by its node's uses per round of that
row (count / rounds since the node last sent it) and divides by the rates of every
node known to use the row, the silent ones at the rate they last sent: a node that
sends every k rounds then moves the row, over those k rounds, as much as it would have
in k rounds of full uploads.

Pure numpy; ``with_shared_embeddings`` lets any rule (PF-MSMTrec, FedAvg family)
aggregate everything else exactly as without the switch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from pfms_client.template import DELTA_PART, Group, classify, is_shared_table, touched_names

from .state import Arrays, ServerState

# One client's answer for one table: (rows [r], counts [r], values [r, d]); rows and counts
# unsigned integers (pfms_client.template.unsigned_for).
Touched = tuple[np.ndarray, np.ndarray, np.ndarray]
Aggregate = Callable[[ServerState, Mapping[str, Arrays], Mapping[str, int]], ServerState]


def _table(table: np.ndarray) -> np.ndarray:
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"a shared table is [rows, dim], got shape {table.shape}")
    return table


def _distinct(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    if len(np.unique(rows)) != len(rows):
        raise ValueError("an upload lists a row twice")
    return rows


def touched_row_mean(table: np.ndarray, uploads: Sequence[Touched], step: float = 1.0) -> np.ndarray:
    """``table`` with each row some upload touched replaced by the count-weighted mean of the
    uploads' values for it; untouched rows are returned as they were. ``step`` != 1 moves a
    touched row by that multiple of the way to the mean (a server learning rate, as in
    FedOpt: the mean of changes that disagree is shorter than each of them).

    Every upload's rows are distinct and inside the table, counts >= 1 and values finite
    (``validate.touched_problems`` says so before a reply gets here)."""
    table = _table(table)
    out = table.copy()
    sums = np.zeros(table.shape, dtype=np.float64)
    weights = np.zeros(table.shape[0], dtype=np.float64)
    for rows, counts, values in uploads:
        rows = _distinct(rows)
        w = np.asarray(counts, dtype=np.float64)  # exact: a count below 2**53
        sums[rows] += w[:, None] * np.asarray(values, dtype=np.float64)
        weights[rows] += w
    touched = weights > 0
    mean = sums[touched] / weights[touched, None]
    if step != 1.0:
        mean = table[touched] + step * (mean - table[touched])
    out[touched] = mean.astype(table.dtype)
    return out


@dataclass
class RowRates:
    """One scenario's record of one shared table: per row, the round it last sent the row
    (0: never) and its uses per round then (0.0: never)."""

    sent: np.ndarray  # int64 [R]
    rate: np.ndarray  # float64 [R]

    @classmethod
    def empty(cls, rows: int) -> "RowRates":
        return cls(np.zeros(rows, np.int64), np.zeros(rows, np.float64))


def touched_row_rate_mean(table: np.ndarray, uploads: Mapping[str, Touched], rates: Mapping[str, RowRates],
                          server_round: int, step: float = 1.0) -> tuple[np.ndarray, dict[str, RowRates]]:
    """(``table`` moved by the rate-weighted mean of the sent changes, every scenario's
    updated record) for capped uploads.

    ``uploads``: scenario -> its sent rows (values, not deltas); ``rates``: scenario -> its
    record before this round (absent: a scenario that never sent). A sent row's count
    covers the rounds since the scenario last sent it (or since round 1), so its rate is
    count / (server_round - last sent round). Row r becomes
    ``table[r] + step * sum_senders rate_i (value_i - table[r]) / sum_known rate_j``."""
    table = _table(table)
    size = table.shape[0]
    new = {s: RowRates(r.sent.copy(), r.rate.copy()) for s, r in rates.items()}
    sums = np.zeros(table.shape, dtype=np.float64)
    sent = np.zeros(size, dtype=bool)
    for scenario, (rows, counts, values) in sorted(uploads.items()):
        rows = _distinct(rows)
        sent[rows] = True
        rec = new.setdefault(scenario, RowRates.empty(size))
        rounds = server_round - rec.sent[rows]
        if (rounds < 1).any():
            raise ValueError(f"scenario {scenario}: a row sent twice in round {server_round}")
        rate = np.asarray(counts, dtype=np.float64) / rounds
        rec.sent[rows], rec.rate[rows] = server_round, rate
        sums[rows] += rate[:, None] * (np.asarray(values, dtype=np.float64) - table[rows])
    total = np.zeros(size, dtype=np.float64)
    for rec in new.values():
        total += rec.rate
    out = table.copy()
    out[sent] = (table[sent] + step * sums[sent] / total[sent, None]).astype(table.dtype)
    return out, new


def split_touched(upload: Arrays) -> tuple[Arrays, dict[str, tuple[Touched, bool]]]:
    """(every other tensor, shared table name -> (its touched rows, whether the third part
    holds float16 deltas rather than values)) of one client's upload."""
    rest = {n: a for n, a in upload.items() if classify(n).group is not Group.SHARED_EMBEDDING}
    tables: dict[str, tuple[Touched, bool]] = {}
    for name in upload:
        role = classify(name)
        if role.group is Group.SHARED_EMBEDDING:
            table = f"{role.unit}.weight"
            if table not in tables:
                parts = touched_names(table)
                delta = parts[DELTA_PART] in upload
                third = upload[parts[DELTA_PART] if delta else parts["values"]]
                tables[table] = ((upload[parts["rows"]], upload[parts["counts"]], third), delta)
    return rest, tables


def absolute(answer: Touched, delta: bool, sent: np.ndarray) -> Touched:
    """A touched-row answer with values: float16 deltas are added (in float64) to the rows as
    ``sent``, the table every node received this round."""
    rows, counts, third = answer
    if not delta:
        return answer
    at = np.asarray(rows, dtype=np.int64)
    sent = np.asarray(sent)
    return rows, counts, (sent[at].astype(np.float64) + np.asarray(third, dtype=np.float64)).astype(sent.dtype)


def with_shared_embeddings(aggregate: Aggregate, *, capped: bool = False, step: float = 1.0) -> Aggregate:
    """``aggregate`` on everything but the shared tables, then each shared table by
    ``touched_row_mean`` over the clients' touched rows (``capped``: by
    ``touched_row_rate_mean``, keeping each scenario's row rates in its state); one copy
    for everybody (kept with the global tensors, which every scenario receives). ``step``:
    strategy.shared_embeddings.server_lr."""

    def run(state: ServerState, uploads: Mapping[str, Arrays], num_examples: Mapping[str, int]) -> ServerState:
        rest: dict[str, Arrays] = {}
        touched: dict[str, dict[str, tuple[Touched, bool]]] = {}
        for scenario in sorted(uploads):
            rest[scenario], tables = split_touched(uploads[scenario])
            for table, answer in tables.items():
                touched.setdefault(table, {})[scenario] = answer
        new = aggregate(state, rest, num_examples)
        if touched:
            new = new if new is not state else copy.deepcopy(state)
        for table, answers in sorted(touched.items()):
            current = state.global_arrays.get(table)
            if current is None:
                current = (state.init or {}).get(table)
            if current is None:
                raise ValueError(f"{table}: no such shared table in the server state")
            values = {s: absolute(a, d, current) for s, (a, d) in answers.items()}
            if not capped:
                new.global_arrays[table] = touched_row_mean(current, [values[s] for s in sorted(values)], step)
                continue
            known = {s: RowRates(sc.row_sent[table], sc.row_rate[table])
                     for s, sc in state.scenarios.items() if table in sc.row_sent}
            new.global_arrays[table], records = touched_row_rate_mean(current, values, known, state.round + 1, step)
            for s, rec in records.items():
                mine = new.own(s)
                mine.row_sent[table], mine.row_rate[table] = rec.sent, rec.rate
        return new

    return run


def shared_tables(arrays: Arrays) -> list[str]:
    return sorted(n for n in arrays if is_shared_table(n))


__all__ = ["RowRates", "Touched", "absolute", "shared_tables", "split_touched", "touched_row_mean",
           "touched_row_rate_mean", "with_shared_embeddings"]
