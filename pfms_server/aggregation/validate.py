"""Checks on a client's reply before it may touch the server state.

A reply with an unexpected tensor name, a wrong shape or dtype, or NaN/Inf is
dropped for the round; the caller logs the node and the tensor named here. A
shared-id table (``shared_embedding.<field>.weight``) is sent whole but answered
with its touched rows (``.rows`` / ``.counts`` / ``.values``): ``touched_problems``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from pfms_client.template import DELTA_PART, is_shared_table, touched_names, unsigned_for


def upload_problems(received: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> list[str]:
    """Every way ``received`` differs from the tensors the node was sent."""
    tables = [n for n in expected if is_shared_table(n)]
    if tables:  # each shared table comes back as its touched rows
        problems = []
        for table in sorted(tables):
            problems += touched_problems(table, received, expected[table])
        parts = {p for t in tables for p in touched_names(t).values()}
        received = {n: a for n, a in received.items() if n not in parts}
        expected = {n: a for n, a in expected.items() if n not in tables}
        return problems + upload_problems(received, expected)
    problems = [f"missing tensor {n}" for n in sorted(set(expected) - set(received))]
    problems += [f"unexpected tensor {n}" for n in sorted(set(received) - set(expected))]
    for name in sorted(set(received) & set(expected)):
        got, want = received[name], expected[name]
        if got.shape != want.shape:
            problems.append(f"tensor {name}: shape {got.shape}, expected {want.shape}")
        elif got.dtype != want.dtype:
            problems.append(f"tensor {name}: dtype {got.dtype}, expected {want.dtype}")
        elif got.dtype.kind == "f" and not np.isfinite(got).all():
            problems.append(f"tensor {name}: contains NaN or Inf")
    return problems


def touched_problems(table: str, received: Mapping[str, np.ndarray], sent: np.ndarray) -> list[str]:
    """The touched-row answer for the shared table ``table`` (``sent``: the table the node got):
    rows [r] of the unsigned type that indexes the table (``unsigned_for(size - 1)``), distinct
    and inside it; counts [r] of an unsigned type, each >= 1; and either values [r, d] of the
    table's dtype or deltas [r, d] of float16, finite. Empty (r = 0) when no trained row
    looked the table up."""
    names = touched_names(table)
    missing = [names[p] for p in ("rows", "counts") if names[p] not in received]
    carried = [p for p in ("values", DELTA_PART) if names[p] in received]
    if missing or len(carried) != 1:
        return [f"missing tensor {n}" for n in missing] + (
            [] if len(carried) == 1 else [f"tensor {names['values']}: expected it or {names[DELTA_PART]}, "
                                          f"got {'both' if carried else 'neither'}"])
    rows, counts, values = (received[names[p]] for p in ("rows", "counts", carried[0]))
    size, dim = sent.shape
    index = np.dtype(unsigned_for(size - 1))
    if rows.dtype != index or rows.ndim != 1:
        return [f"tensor {names['rows']}: expected {index} [r], got {rows.dtype} {rows.shape}"]
    if counts.dtype.kind != "u" or counts.shape != rows.shape:
        return [f"tensor {names['counts']}: expected unsigned integers {rows.shape}, got {counts.dtype} "
                f"{counts.shape}"]
    want = np.dtype(np.float16) if carried[0] == DELTA_PART else sent.dtype
    if values.dtype != want or values.shape != (len(rows), dim):
        return [f"tensor {names[carried[0]]}: expected {want} {(len(rows), dim)}, got {values.dtype} {values.shape}"]
    if len(rows) and rows.max() >= size:  # unsigned (checked above): never below 0
        return [f"tensor {names['rows']}: rows outside [0, {size})"]
    if len(np.unique(rows)) != len(rows):
        return [f"tensor {names['rows']}: a row is listed twice"]
    if len(counts) and counts.min() < 1:
        return [f"tensor {names['counts']}: counts must be >= 1 (a touched row), got {int(counts.min())}"]
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        return [f"tensor {names[carried[0]]}: contains NaN or Inf"]
    return []


def count_problems(value: object) -> str | None:
    """The sample count must be a positive finite number."""
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float
        return f"num-examples {value!r} is not a number"
    if not np.isfinite(n) or n <= 0:
        return f"num-examples {value!r} is not a positive number"
    return None
