"""pfms_client.wire: a message's tensors in one packed Flower Array, read back exactly,
and every malformed buffer refused with one line that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from conftest import forge
from pfms_client.wire import ALIGN, KEY, WireError, pack, unpack


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "experts.shared.0.weight": rng.standard_normal((5, 3)).astype(np.float32),
        "bn.running_mean": rng.standard_normal(7).astype(np.float32),
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),  # 0-d
        "emb.rows": rng.integers(0, 1000, size=9).astype(np.int64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "strided": rng.standard_normal((6, 4)).astype(np.float64)[:, ::2],  # not contiguous
        "mask": np.array([True, False, True]),
    }


def test_round_trip_is_exact_in_names_order_dtypes_shapes_and_bytes():
    sent = _tensors()
    got = unpack(pack(sent))
    assert list(got) == list(sent)
    for name, want in sent.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert got[name].tobytes() == np.ascontiguousarray(want).tobytes(), name
        got[name].reshape(-1)[:0] = 0  # writable


def test_unpacked_arrays_do_not_share_memory_with_the_record():
    record = pack(_tensors())
    first = unpack(record)
    first["bn.running_mean"][:] = 99.0
    assert not np.any(unpack(record)["bn.running_mean"] == 99.0)


def test_tensors_sit_at_aligned_offsets_in_one_array():
    record = pack(_tensors())
    assert list(record.keys()) == [KEY]
    offsets = []
    forge(record, lambda h: offsets.extend(e["offset"] for e in h["tensors"]))
    assert offsets and all(o % ALIGN == 0 for o in offsets)


def test_a_packed_message_is_a_handful_of_flower_objects():
    """Why pack: every Flower object is an HTTPS request on every hop of a deployment."""
    tensors = {f"t{i}": np.full((16, 8), i, dtype=np.float32) for i in range(24)}
    separate = ArrayRecord({k: Array(v) for k, v in tensors.items()})
    assert len(get_all_nested_objects(pack(tensors))) == 3  # ArrayRecord, Array, one chunk
    assert len(get_all_nested_objects(separate)) == 1 + 2 * 24


def _set(field, value, name="bn.running_mean"):
    def mutate(header):
        next(e for e in header["tensors"] if e["name"] == name)[field] = value
    return mutate


@pytest.mark.parametrize("mutate,words", [
    (_set("offset", 10**9), "tensor bn.running_mean: bytes 1000"),
    (_set("shape", [10**12, 10**12]), "lie outside the packed array"),
    (_set("shape", [-1]), "tensor bn.running_mean: shape [-1] is not a list of sizes"),
    (_set("shape", "7"), "is not a list of sizes"),
    (_set("offset", -64), "offset -64 is not a byte offset"),
    (_set("offset", 1.5), "offset 1.5 is not a byte offset"),
    (_set("dtype", "O"), "tensor bn.running_mean: dtype object is not a number type"),
    (_set("dtype", "U8"), "is not a number type"),
    (_set("dtype", "no-such-type"), "dtype 'no-such-type' is not a numpy dtype"),
    (_set("name", 3), "header entry 1: name 3 is not a string"),
    (_set("name", "experts.shared.0.weight"), "tensor experts.shared.0.weight: listed twice"),
    (lambda h: h.update(tensors={"a": 1}), "'tensors' is not a list"),
    (lambda h: h.pop("tensors"), "header cannot be read (KeyError"),
    (lambda h: h["tensors"].append([1, 2]), "header entry 7 is a list, not an object"),
])
def test_a_forged_header_is_one_clear_error(mutate, words):
    with pytest.raises(WireError) as err:
        unpack(forge(pack(_tensors()), mutate))
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def _raw(data: bytes) -> ArrayRecord:
    return ArrayRecord({KEY: Array(np.frombuffer(data, dtype=np.uint8).copy())})


@pytest.mark.parametrize("record,words", [
    (ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))}), "expected one packed array 'packed', got ['w']"),
    (ArrayRecord(), "expected one packed array 'packed', got []"),
    (ArrayRecord({KEY: Array(np.zeros((2, 2), dtype=np.uint8))}), "expected 1-d uint8"),
    (ArrayRecord({KEY: Array(np.zeros(4, dtype=np.float32))}), "expected 1-d uint8"),
    (_raw(b"\x01\x02"), "shorter than its header length field"),
    (_raw((10**6).to_bytes(8, "little") + b"{}"), "header of 1000000 bytes does not fit"),
    (_raw((4).to_bytes(8, "little") + b"{no}"), "header cannot be read (JSONDecodeError"),
    (_raw((2).to_bytes(8, "little") + b"\xff\xfe"), "header cannot be read"),
    (ArrayRecord({KEY: Array(dtype="uint8", shape=(3,), stype="numpy.ndarray", data=b"junk")}),
     "packed array cannot be decoded"),
])
def test_a_malformed_record_is_one_clear_error(record, words):
    with pytest.raises(WireError) as err:
        unpack(record)
    assert words in str(err.value)


def test_not_an_array_record_is_refused():
    with pytest.raises(WireError, match="'arrays' is a dict, not an ArrayRecord"):
        unpack({KEY: 1})
