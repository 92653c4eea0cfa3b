"""A model update on the wire: all of a message's tensors in one Flower Array.

Flower sends every Array of an ArrayRecord as objects of its own (the Array and its
chunks), and in a deployment each object is one HTTPS request on every hop (ServerApp
to SuperLink to SuperNode to ClientApp, and back), two requests at a time. pfms's
model is a few dozen small tensors, so one message was 51 objects. Worse, a SuperNode
hands a message to its ClientApp before it has pulled the message's objects, and a
ClientApp that asks for an object too early waits in Flower's backoff (1, 2, 4, 8 s):
in the deployment test a ClientApp spent 7-20 s of every message waiting. Packed, a
message is 5 objects.

The packed Array is a flat ``uint8`` buffer: an 8-byte little-endian header length,
a JSON header (per tensor: name, dtype, shape, byte offset) and the tensors' bytes,
each at an offset aligned to ``ALIGN``. ``unpack`` trusts nothing in it: whatever a
peer sent becomes a ``WireError`` naming what is wrong, never another exception.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

KEY = "packed"  # the one Array of a packed ArrayRecord
ALIGN = 64  # byte alignment of every tensor in the buffer (numpy views stay aligned)
_HEADER_LEN_BYTES = 8
# What a tensor may be: numbers and booleans (no objects, strings, or structured dtypes).
_KINDS = frozenset("biuf")


class WireError(ValueError):
    """A packed record that cannot be read, with the reason."""


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``tensors`` (name to C-contiguous-able numpy array) as one packed ArrayRecord."""
    arrays = {name: np.require(value, requirements="C") for name, value in tensors.items()}  # keeps 0-d
    entries, offset = [], 0
    for name, arr in arrays.items():
        entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset})
        offset = _aligned(offset + arr.nbytes)
    header = json.dumps({"tensors": entries}, separators=(",", ":")).encode()
    start = _aligned(_HEADER_LEN_BYTES + len(header))
    buf = np.zeros(start + offset, dtype=np.uint8)
    buf[:_HEADER_LEN_BYTES] = np.frombuffer(len(header).to_bytes(_HEADER_LEN_BYTES, "little"), dtype=np.uint8)
    buf[_HEADER_LEN_BYTES:_HEADER_LEN_BYTES + len(header)] = np.frombuffer(header, dtype=np.uint8)
    for entry, arr in zip(entries, arrays.values()):
        at = start + entry["offset"]
        buf[at:at + arr.nbytes] = arr.reshape(-1).view(np.uint8)
    return ArrayRecord({KEY: Array(buf)})


def unpack(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The tensors of a record ``pack`` built, in their packed order (each a copy it owns)."""
    if not isinstance(record, ArrayRecord):
        raise WireError(f"'arrays' is a {type(record).__name__}, not an ArrayRecord")
    if list(record.keys()) != [KEY]:
        raise WireError(f"expected one packed array {KEY!r}, got {sorted(record.keys())[:5]}")
    try:
        buf = record[KEY].numpy()
    except Exception as exc:  # pylint: disable=broad-exception-caught  # any bytes may arrive
        raise WireError(f"packed array cannot be decoded ({type(exc).__name__}: {exc})") from None
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise WireError(f"packed array is {buf.dtype} of shape {buf.shape}, expected 1-d uint8")
    if buf.size < _HEADER_LEN_BYTES:
        raise WireError(f"packed array of {buf.size} bytes is shorter than its header length field")
    header_len = int.from_bytes(buf[:_HEADER_LEN_BYTES].tobytes(), "little")
    if header_len > buf.size - _HEADER_LEN_BYTES:
        raise WireError(f"header of {header_len} bytes does not fit a packed array of {buf.size} bytes")
    try:
        header = json.loads(buf[_HEADER_LEN_BYTES:_HEADER_LEN_BYTES + header_len].tobytes())
        entries = header["tensors"]
        if not isinstance(entries, list):
            raise TypeError("'tensors' is not a list")
    except (ValueError, TypeError, KeyError) as exc:
        raise WireError(f"header cannot be read ({type(exc).__name__}: {exc})") from None
    start = _aligned(_HEADER_LEN_BYTES + header_len)
    out: dict[str, np.ndarray] = {}
    for i, entry in enumerate(entries):
        name, dtype, shape, offset = _entry(i, entry)
        if name in out:
            raise WireError(f"tensor {name}: listed twice")
        nbytes = dtype.itemsize * math.prod(shape)  # Python ints: a forged shape cannot overflow
        at = start + offset
        if at + nbytes > buf.size:
            raise WireError(f"tensor {name}: bytes {at}..{at + nbytes} lie outside the packed array "
                            f"of {buf.size} bytes")
        out[name] = buf[at:at + nbytes].view(dtype).reshape(shape).copy()
    return out


def _entry(i: int, entry: object) -> tuple[str, np.dtype, tuple[int, ...], int]:
    """One header entry, checked: (name, dtype, shape, offset)."""
    if not isinstance(entry, dict):
        raise WireError(f"header entry {i} is a {type(entry).__name__}, not an object")
    name = entry.get("name")
    if not isinstance(name, str):
        raise WireError(f"header entry {i}: name {name!r} is not a string")
    try:
        dtype = np.dtype(entry.get("dtype"))
    except (TypeError, ValueError):
        raise WireError(f"tensor {name}: dtype {entry.get('dtype')!r} is not a numpy dtype") from None
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"tensor {name}: dtype {dtype} is not a number type")
    shape, offset = entry.get("shape"), entry.get("offset")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise WireError(f"tensor {name}: shape {shape!r} is not a list of sizes")
    if not (type(offset) is int and offset >= 0):
        raise WireError(f"tensor {name}: offset {offset!r} is not a byte offset")
    return name, dtype, tuple(shape), offset
