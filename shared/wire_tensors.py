"""Tensors on the wire: one tensor map's bytes, weights maps checked against a spec, float16.

A tensor is the map ``{"dtype": "float32", "shape": [10, 784], "data": <bin>}``, its data
the array's raw little-endian bytes in C order; a weights payload maps tensor names to
tensors in the model's state_dict order. The messages that carry them are wire.py's.

Encoding leaves each tensor's bytes in place (a read-only view of the array) and pads the
map's header so that the data starts at a multiple of 8 bytes from the message start:
decoded views are then aligned for their dtype (numpy's fast loops need that). Decoding
is zero-copy: arrays are read-only `np.frombuffer` views of the received bytes (copy
before in-place math). This module imports only numpy and msgpack.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgpack
import numpy as np

from shared.errors import (
    MalformedMessage,
    NonFiniteTensor,
    SpecMismatch,
    TensorSizeError,
    UnsupportedDtype,
)

__all__ = [
    "DTYPES",
    "MAX_NDIM",
    "TensorSpec",
    "conform",
    "decode_tensor",
    "decode_weights",
    "encode_tensor",
    "kind_of",
    "spec_of",
    "to_float16",
]

MAX_NDIM = 32
# The dtype names the wire accepts, each meaning the little-endian numpy type.
DTYPES: frozenset[str] = frozenset(
    {"bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
    | {"float16", "float32", "float64"}
)
# The encoder starts each tensor's data at a multiple of this many bytes from the message
# start, so that decoded views are aligned for their dtype (unaligned ones are slower).
_ALIGN = 8
_WIRE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
# numpy refuses a shape whose non-zero dims make more bytes than an intp can count.
_MAX_NBYTES = int(np.iinfo(np.intp).max)
# A float16 is NaN or Inf exactly when these, its five exponent bits, are all ones.
_FLOAT16_EXPONENT = 0x7C00


class TensorSpec(NamedTuple):
    """What a tensor must look like: its shape and dtype name."""

    shape: tuple[int, ...]
    dtype: str


def spec_of(weights: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    """Return the reference spec (names, shapes, dtypes) of a weights dict."""
    return {name: TensorSpec(tuple(a.shape), a.dtype.name) for name, a in weights.items()}


# ---------------------------------------------------------------------------- encoding


def encode_tensor(
    array: np.ndarray, name: str, *, offset: int, packer: msgpack.Packer
) -> tuple[bytes, memoryview]:
    """Return a tensor map as its head and its data, a read-only view of the array's bytes.

    Placed at `offset` bytes from the message start, the head ends where the data starts
    at a multiple of 8 bytes. `packer` packs the shape; `name` names the tensor in errors.
    """
    dtype_name = array.dtype.name
    if dtype_name not in DTYPES:
        raise UnsupportedDtype(name, f"dtype {dtype_name!r} cannot go on the wire")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    data = np.ascontiguousarray(little).reshape(-1).view(np.uint8).data
    fields = (dtype_name, packer.pack(list(array.shape)), _bin_header(data.nbytes, name))
    head = _tensor_head(*fields, pad=0)
    pad = -(offset + len(head)) % _ALIGN
    return (_tensor_head(*fields, pad=pad) if pad else head), data.toreadonly()


def _tensor_head(dtype_name: str, packed_shape: bytes, bin_header: bytes, *, pad: int) -> bytes:
    """Pack a tensor map up to its data, `pad` (0 to 7) bytes longer than minimal.

    The padding widens up to three str headers (by 1, 2 and 4 bytes), which leaves every
    value unchanged for any msgpack reader.
    """
    return (
        b"\x83"
        + _str("dtype", widen=pad & 1)
        + _str(dtype_name, widen=pad & 2)
        + _str("shape", widen=0)
        + packed_shape
        + _str("data", widen=pad & 4)
        + bin_header
    )


def _str(text: str, *, widen: int) -> bytes:
    """Pack a str of under 32 bytes with a header `widen` (0, 1, 2 or 4) bytes wider."""
    raw = text.encode()
    if widen == 0:
        return bytes([0xA0 | len(raw)]) + raw
    code = {1: b"\xd9", 2: b"\xda", 4: b"\xdb"}[widen]
    return code + len(raw).to_bytes(widen, "big") + raw


def _bin_header(size: int, name: str) -> bytes:
    if size < 1 << 8:
        return b"\xc4" + struct.pack(">B", size)
    if size < 1 << 16:
        return b"\xc5" + struct.pack(">H", size)
    if size < 1 << 32:
        return b"\xc6" + struct.pack(">I", size)
    raise TensorSizeError(name, f"{size} bytes exceeds the 4 GiB limit of one msgpack bin")


def to_float16(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast float32 tensors to float16 for lossy transport; others pass unchanged."""
    out: dict[str, np.ndarray] = {}
    for name, array in weights.items():
        if array.dtype.name != "float32":
            out[name] = array
            continue
        with np.errstate(over="ignore"):
            half = array.astype(np.float16)
        if not _all_finite(half) and (np.isinf(half) & np.isfinite(array)).any():
            raise NonFiniteTensor(name, "values exceed float16 range (65504); send float32")
        out[name] = half
    return out


# ---------------------------------------------------------------------------- decoding


def decode_tensor(name: str, obj: Any, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Validate one tensor map and return a read-only array viewing its bytes."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise MalformedMessage(
            f"tensor {name!r}: expected a map with keys dtype, shape, data; got {kind_of(obj)}"
        )
    dtype_name, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise UnsupportedDtype(name, f"unsupported dtype {dtype_name!r}")
    shape = _check_shape(name, shape)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"tensor {name!r}: data must be msgpack bin, got {kind_of(data)}")
    dtype = _WIRE_DTYPES[dtype_name]
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise TensorSizeError(
            name, f"shape {list(shape)} of {dtype_name} needs {expected} bytes, got {len(data)}"
        )
    if math.prod(dim for dim in shape if dim) * dtype.itemsize > _MAX_NBYTES:
        raise TensorSizeError(name, f"shape {list(shape)} is larger than any array can be")
    if dtype_name == "bool" and len(data) and np.frombuffer(data, np.uint8).max() > 1:
        raise MalformedMessage(f"tensor {name!r}: bool data must hold only bytes 0 and 1")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    array.flags.writeable = False  # also when the message was decoded from a bytearray
    if not allow_nonfinite and not _all_finite(array):
        raise NonFiniteTensor(name, "contains NaN or Inf")
    return array


def decode_weights(
    obj: Any,
    *,
    spec: Mapping[str, TensorSpec] | None = None,
    allow_nonfinite: bool = False,
) -> dict[str, np.ndarray]:
    """Decode a weights map; with `spec`, names, shapes and dtypes must match it.

    A float16 tensor is accepted where the spec says float32 (lossy transport) and is
    cast back to float32.
    """
    if not isinstance(obj, dict):
        raise MalformedMessage(f"weights must be a map of name to tensor, got {kind_of(obj)}")
    if spec is not None:
        _check_names(obj, spec)
    weights: dict[str, np.ndarray] = {}
    for name in spec if spec is not None else obj:
        if not isinstance(name, str):
            raise MalformedMessage(f"tensor names must be strings, got {name!r}")
        array = decode_tensor(name, obj[name], allow_nonfinite=allow_nonfinite)
        weights[name] = array if spec is None else conform(name, array, spec[name])
    return weights


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise MalformedMessage(
            f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} ints, got {shape!r:.80}"
        )
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise MalformedMessage(f"tensor {name!r}: shape {shape!r:.80} has a bad dimension")
    return tuple(shape)


def _check_names(obj: Mapping[Any, Any], spec: Mapping[str, TensorSpec]) -> None:
    missing = [name for name in spec if name not in obj]
    if missing:
        raise SpecMismatch(missing[0], f"missing ({len(missing)} tensors missing in all)")
    unexpected = [name for name in obj if name not in spec]
    if unexpected:
        raise SpecMismatch(str(unexpected[0]), "is not a tensor of this model")


def conform(name: str, array: np.ndarray, expected: TensorSpec) -> np.ndarray:
    """Check a tensor against the model's; float16 widens to float32 (lossy transport)."""
    if array.shape != tuple(expected.shape):
        raise SpecMismatch(
            name, f"shape {list(array.shape)} does not match the model's {list(expected.shape)}"
        )
    if array.dtype.name == expected.dtype:
        return array
    if array.dtype == np.float16 and expected.dtype == "float32":
        return array.astype(np.float32)
    raise SpecMismatch(
        name, f"dtype {array.dtype.name} does not match the model's {expected.dtype}"
    )


def _all_finite(array: np.ndarray) -> bool:
    """Tell whether a tensor holds no NaN or Inf.

    float32 and float64, fast path: the sum of squares (a BLAS dot product, twice as fast
    as numpy's own sum here). Squares are never negative, so nothing cancels: a NaN or Inf
    element makes the result NaN or Inf, and a finite result proves every element finite.
    Large finite elements can overflow it too, so then the exact elementwise check decides.
    float16 (whose arithmetic numpy emulates slowly): an exact test of the exponent bits.
    """
    if array.dtype.kind != "f" or array.size == 0:
        return True
    if array.dtype.itemsize == 2:
        bits = array.view(np.dtype(np.uint16).newbyteorder(array.dtype.byteorder))
        return int(np.bitwise_and(bits, _FLOAT16_EXPONENT).max()) != _FLOAT16_EXPONENT
    with np.errstate(over="ignore", invalid="ignore"):
        flat = array.reshape(-1)
        total = np.dot(flat, flat)
    return math.isfinite(total) or bool(np.isfinite(array).all())


def kind_of(obj: Any) -> str:
    """Name the type of a decoded msgpack value in an error message (a bin is a memoryview)."""
    return "bin" if isinstance(obj, memoryview) else type(obj).__name__
