"""Reading a compressed tensor map's fields: each check raises an error naming the tensor.

Every compressed tensor map holds "encoding" (str), "dtype" (always "float32": the dtype
it decodes to) and "shape" (the decoded shape), then its encoding's own fields. Bins are
read as read-only numpy views of the received bytes, their lengths checked before use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.compression.errors import EncodingError
from shared.errors import NonFiniteTensor, SpecMismatch, TensorSizeError, UnsupportedDtype
from shared.wire_tensors import DTYPES, MAX_NDIM, kind_of

__all__ = [
    "COMMON_KEYS",
    "F32",
    "MAX_MAGNITUDE",
    "bin_field",
    "bounded_floats",
    "check_header",
    "check_keys",
    "choice_field",
    "int_field",
    "raw_bin",
]

COMMON_KEYS = frozenset({"encoding", "dtype", "shape"})
F32 = np.dtype("<f4")
# Scales and mins beyond this are refused, so every decoded value is finite in float32.
MAX_MAGNITUDE = 2.0**64


def check_keys(name: str, obj: Mapping[str, Any], keys: frozenset[str]) -> None:
    """Refuse a map whose keys are not exactly `keys`."""
    missing = sorted(keys - set(obj))
    if missing:
        raise EncodingError(name, f"{obj.get('encoding')!r:.20} map lacks field {missing[0]!r}")
    extra = [key for key in obj if key not in keys]
    if extra:
        raise EncodingError(name, f"{obj['encoding']!r:.20} map has unknown field {extra[0]!r:.40}")


def check_header(name: str, obj: Mapping[str, Any], shape: tuple[int, ...]) -> None:
    """Check the map's "dtype" (float32) and "shape" (exactly `shape`)."""
    dtype = obj.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise UnsupportedDtype(name, f"unsupported dtype {dtype!r:.40}")
    if dtype != "float32":
        raise UnsupportedDtype(name, f"compressed tensors decode to float32, not {dtype}")
    got = obj.get("shape")
    if not isinstance(got, list) or len(got) > MAX_NDIM:
        raise EncodingError(name, f"shape must be a list of at most {MAX_NDIM} ints")
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in got):
        raise EncodingError(name, f"shape {got!r:.80} has a bad dimension")
    if tuple(got) != shape:
        raise SpecMismatch(name, f"shape {got!r:.80} does not match the model's {list(shape)}")


def choice_field(name: str, obj: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """Return the str field `key`, one of `choices`."""
    value = obj.get(key)
    if not isinstance(value, str) or value not in choices:
        raise EncodingError(name, f"{key} must be one of {', '.join(choices)}; got {value!r:.40}")
    return value


def int_field(name: str, obj: Mapping[str, Any], key: str, low: int, high: int) -> int:
    """Return the int field `key`, from `low` to `high` (a bool is not an int here)."""
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise EncodingError(name, f"{key} must be an int from {low} to {high}; got {value!r:.40}")
    return value


def raw_bin(name: str, obj: Mapping[str, Any], key: str) -> np.ndarray:
    """Return the bin field `key` as a read-only uint8 array viewing its bytes."""
    value = obj.get(key)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise EncodingError(name, f"{key} must be msgpack bin, got {kind_of(value)}")
    try:
        raw = np.frombuffer(value, np.uint8)
    except (ValueError, TypeError) as exc:  # a non-contiguous buffer
        raise EncodingError(name, f"{key}: unreadable bytes ({exc})") from None
    raw.flags.writeable = False
    return raw


def bin_field(
    name: str, obj: Mapping[str, Any], key: str, dtype: np.dtype[Any], count: int
) -> np.ndarray:
    """Return the bin field `key` as exactly `count` items of `dtype` (little-endian)."""
    raw = raw_bin(name, obj, key)
    need = count * dtype.itemsize
    if raw.size != need:
        raise TensorSizeError(
            name, f"{key} holds {raw.size} bytes; {count} {dtype.name} need {need}"
        )
    return raw.view(dtype)


def bounded_floats(name: str, key: str, values: np.ndarray, *, low: float) -> None:
    """Refuse NaN or Inf in `values`, and values outside [low, 2^64]."""
    if not np.isfinite(values).all():
        raise NonFiniteTensor(name, f"{key} holds NaN or Inf")
    if values.size and (values.min() < low or values.max() > MAX_MAGNITUDE):
        raise EncodingError(name, f"{key} must lie in [{low:g}, 2^64]")
