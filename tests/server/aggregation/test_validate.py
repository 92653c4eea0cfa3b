"""What makes a client's reply unusable, by kind (the Strategy drops such replies)."""

from __future__ import annotations

import numpy as np
import pytest

from pfms_server.aggregation.validate import count_problems, upload_problems

EXPECTED = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32), "n": np.array(5, np.int64)}


def good() -> dict[str, np.ndarray]:
    return {"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.float32), "n": np.array(9, np.int64)}


def test_a_good_reply_has_no_problem():
    assert upload_problems(good(), EXPECTED) == []
    assert upload_problems({}, {}) == []


@pytest.mark.parametrize("patch,problem", [
    (lambda r: r.pop("b"), "missing tensor b"),
    (lambda r: r.update(c=np.zeros(1, np.float32)), "unexpected tensor c"),
    (lambda r: r.update(a=np.zeros((3, 2), np.float32)), "tensor a: shape (3, 2), expected (2, 3)"),
    (lambda r: r.update(a=np.zeros(6, np.float32)), "tensor a: shape (6,), expected (2, 3)"),
    (lambda r: r.update(b=np.zeros(4, np.float64)), "tensor b: dtype float64, expected float32"),
    (lambda r: r.update(n=np.array(5, np.int32)), "tensor n: dtype int32, expected int64"),
    (lambda r: r["a"].__setitem__((1, 2), np.nan), "tensor a: contains NaN or Inf"),
    (lambda r: r["b"].__setitem__(0, np.inf), "tensor b: contains NaN or Inf"),
    (lambda r: r["b"].__setitem__(3, -np.inf), "tensor b: contains NaN or Inf"),
], ids=["missing", "unexpected", "shape", "flat-shape", "dtype", "int-dtype", "nan", "inf", "-inf"])
def test_each_kind_of_bad_tensor_is_named(patch, problem):
    r = good()
    patch(r)
    assert upload_problems(r, EXPECTED) == [problem]


def test_all_problems_are_listed_in_a_stable_order():
    r = good()
    del r["a"]
    r["z"] = np.zeros(1, np.float32)
    r["y"] = np.zeros(1, np.float32)
    r["b"] = np.full(4, np.nan, np.float32)
    assert upload_problems(r, EXPECTED) == ["missing tensor a", "unexpected tensor y", "unexpected tensor z",
                                            "tensor b: contains NaN or Inf"]


@pytest.mark.parametrize("value", [1, 1.0, 2048, "17", np.int64(3), 1e-3])
def test_positive_counts_are_accepted(value):
    assert count_problems(value) is None


@pytest.mark.parametrize("value,words", [
    (0, "not a positive number"), (-5, "not a positive number"), (float("nan"), "not a positive number"),
    (float("inf"), "not a positive number"), (None, "is not a number"), ("many", "is not a number"),
    ([3], "is not a number"),
])
def test_bad_counts_are_named(value, words):
    msg = count_problems(value)
    assert msg is not None and words in msg and msg.startswith(f"num-examples {value!r}")


def test_a_count_too_large_for_a_float_is_named_not_raised():
    assert count_problems(10**400) == f"num-examples {10**400!r} is not a number"
