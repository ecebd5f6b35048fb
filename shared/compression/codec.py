"""Encode a float32 tensor as a CompressionSpec says; decode or accumulate any tensor map.

A compressed tensor map is told apart from a plain one (shared/wire_tensors.py) by its
"encoding" key. Decoding checks the map against the tensor the receiver expects (its
TensorSpec) before it allocates anything, so a map can never make it allocate more than
that tensor's size implies; every problem raises a TensorError naming the tensor
(errors.py), a plain map's structure also MalformedMessage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from shared.compression.blockwise import parse_blockwise, quantize
from shared.compression.decoded import Decoded, Dense, Where
from shared.compression.errors import UnknownEncoding
from shared.compression.fields import check_header
from shared.compression.halves import encode_bf16, encode_f16, parse_bf16, parse_f16
from shared.compression.spec import ENCODINGS, CompressionSpec, plan
from shared.compression.topk import parse_topk, sparsify
from shared.errors import MalformedMessage, NonFiniteTensor, SpecMismatch, UnsupportedDtype
from shared.wire_tensors import TensorSpec, kind_of, spec_of
from shared.wire_tensors import decode_tensor as decode_plain

__all__ = [
    "accumulate_into",
    "decode_tensor",
    "decode_update",
    "encode_tensor",
    "encode_update",
    "is_compressed",
    "iter_decoded",
    "parse",
]

Rng = np.random.Generator | None


def _blockwise(bits: int) -> Callable[[str, np.ndarray, CompressionSpec, Rng], dict[str, Any]]:
    def encode(name: str, x: np.ndarray, spec: CompressionSpec, rng: Rng) -> dict[str, Any]:
        return quantize(
            name,
            x,
            bits=bits,
            block_size=spec.block_size,
            scheme=spec.scheme,
            rounding=spec.rounding,
            rng=rng,
        )

    return encode


def _topk(name: str, x: np.ndarray, spec: CompressionSpec, rng: Rng) -> dict[str, Any]:
    return sparsify(
        name,
        x,
        fraction=spec.fraction,
        values=spec.values,
        block_size=spec.block_size,
        scheme=spec.scheme,
        rounding=spec.rounding,
        rng=rng,
    )


_ENCODERS: dict[str, Callable[[str, np.ndarray, CompressionSpec, Rng], dict[str, Any]]] = {
    "f16": lambda name, x, spec, rng: encode_f16(name, x),
    "bf16": lambda name, x, spec, rng: encode_bf16(name, x),
    "q8": _blockwise(8),
    "q4": _blockwise(4),
    "topk": _topk,
}
_PARSERS: dict[str, Callable[[str, Mapping[str, Any], int], Decoded]] = {
    "f16": parse_f16,
    "bf16": parse_bf16,
    "q8": lambda name, obj, size: parse_blockwise(name, obj, size, 8),
    "q4": lambda name, obj, size: parse_blockwise(name, obj, size, 4),
    "topk": parse_topk,
}
assert tuple(_ENCODERS) == tuple(_PARSERS) == ENCODINGS


# ---------------------------------------------------------------------------- encoding


def encode_tensor(
    name: str, array: np.ndarray, spec: CompressionSpec, rng: Rng = None
) -> dict[str, Any]:
    """Return the compressed tensor map of a float32 array; stochastic rounding needs `rng`."""
    if array.dtype.name != "float32":
        raise UnsupportedDtype(name, f"only float32 tensors are compressed, not {array.dtype.name}")
    x = np.ascontiguousarray(array, np.float32).reshape(-1)
    if not np.isfinite(x).all():
        raise NonFiniteTensor(name, "contains NaN or Inf")
    fields = _ENCODERS[spec.encoding](name, x, spec, rng)
    return {"encoding": spec.encoding, "dtype": "float32", "shape": list(array.shape), **fields}


def encode_update(
    deltas: Mapping[str, np.ndarray], compression: CompressionSpec | None, rng: Rng = None
) -> dict[str, Any]:
    """Return the update's tensors: compressed maps as `plan` says, the rest unchanged."""
    encodings = plan(spec_of(deltas), compression)
    return {
        name: array
        if encodings[name] is None or compression is None
        else encode_tensor(name, array, compression, rng)
        for name, array in deltas.items()
    }


# ---------------------------------------------------------------------------- decoding


def is_compressed(obj: Any) -> bool:
    """Tell whether a received tensor map is a compressed one (it has an "encoding")."""
    return isinstance(obj, dict) and "encoding" in obj


class _Plain(Dense):
    """A plain tensor map's array, read span by span."""

    def __init__(self, array: np.ndarray) -> None:
        self.flat = array.reshape(-1)
        self.size = array.size

    def decode_span(self, start: int, stop: int, out: np.ndarray) -> None:
        """Write the values of elements [start, stop) into `out`."""
        out[...] = self.flat[start:stop]


def parse(name: str, obj: Any, expected: TensorSpec) -> Decoded:
    """Validate a tensor map, compressed or plain, against the expected tensor."""
    if not is_compressed(obj):
        return _Plain(_conform(name, decode_plain(name, obj), expected))
    encoding = obj["encoding"]
    if not isinstance(encoding, str) or encoding not in _PARSERS:
        known = ", ".join(ENCODINGS)
        raise UnknownEncoding(name, f"unknown encoding {encoding!r:.40}; this side knows {known}")
    if expected.dtype != "float32":
        raise SpecMismatch(name, f"a {encoding} tensor is float32; the model's is {expected.dtype}")
    shape = tuple(expected.shape)
    check_header(name, obj, shape)
    return _PARSERS[encoding](name, obj, math.prod(shape))


def decode_tensor(name: str, obj: Any, expected: TensorSpec) -> np.ndarray:
    """Return a tensor map's array: a plain map's (read-only view), or a compressed one's."""
    if not is_compressed(obj):
        return _conform(name, decode_plain(name, obj), expected)
    return parse(name, obj, expected).to_float32().reshape(expected.shape)


def decode_update(obj: Any, spec: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """Decode a map of tensor name to tensor map, its names exactly the spec's."""
    if not isinstance(obj, dict):
        raise MalformedMessage(f"an update must be a map of name to tensor, got {kind_of(obj)}")
    for name in spec:
        if name not in obj:
            raise SpecMismatch(name, "missing")
    for name in obj:
        if name not in spec:
            raise SpecMismatch(str(name)[:200], "is not a tensor of this model")
    return {name: decode_tensor(name, obj[name], expected) for name, expected in spec.items()}


def iter_decoded(name: str, obj: Any, expected: TensorSpec) -> Iterator[tuple[Where, np.ndarray]]:
    """Validate a tensor map whole, then yield its (flat positions, float64 values) pieces."""
    return parse(name, obj, expected).chunks()


def accumulate_into(sum_f64: np.ndarray, obj: Any, weight: float, *, name: str) -> None:
    """Add `weight` times a float32 tensor map's values into a float64 sum, piece by piece.

    The map is validated whole first: on any error the sum is left untouched.
    """
    if sum_f64.dtype != np.float64 or not sum_f64.flags.c_contiguous:
        raise ValueError(f"{name}: the sum must be a C-contiguous float64 array")
    flat = sum_f64.reshape(-1)
    for where, values in iter_decoded(name, obj, TensorSpec(sum_f64.shape, "float32")):
        values *= weight
        flat[where] += values


def _conform(name: str, array: np.ndarray, expected: TensorSpec) -> np.ndarray:
    """Check a plain tensor against the expected one; float16 widens to float32."""
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
