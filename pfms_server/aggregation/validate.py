"""Checks on a client's reply before it may touch the server state.

A reply with an unexpected tensor name, a wrong shape or dtype, or NaN/Inf is
dropped for the round; the caller logs the node and the tensor named here.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def upload_problems(received: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> list[str]:
    """Every way ``received`` differs from the tensors the node was sent."""
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


def count_problems(value: object) -> str | None:
    """The sample count must be a positive finite number."""
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float
        return f"num-examples {value!r} is not a number"
    if not np.isfinite(n) or n <= 0:
        return f"num-examples {value!r} is not a positive number"
    return None
