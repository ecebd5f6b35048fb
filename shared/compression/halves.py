"""float16 and bfloat16: a float32 delta in 2 bytes per element, rounded to nearest even.

float16 is IEEE binary16: 11 significant bits within ±65504. bfloat16 is the top half of
the float32 bit pattern (sign, 8 exponent bits, 7 mantissa bits): float32's range with 8
significant bits. Encoding rounds the low 16 bits away to nearest, ties to even, by adding
0x7FFF plus the lowest kept bit before shifting; decoding shifts the 16 bits back up.
Both refuse values that would round to Inf; decoding refuses NaN and Inf bit patterns.
Wire fields: "data", a bin of size * 2 bytes, each element a little-endian uint16.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.compression.decoded import Dense
from shared.compression.fields import COMMON_KEYS, bin_field, check_keys
from shared.errors import NonFiniteTensor

__all__ = ["KEYS", "Halves", "bf16_bits", "encode_bf16", "encode_f16", "parse_bf16", "parse_f16"]

KEYS = COMMON_KEYS | {"data"}
_U16 = np.dtype("<u2")
# A float16 (bfloat16) is NaN or Inf exactly when these, its exponent bits, are all ones.
_F16_EXPONENT = 0x7C00
_BF16_EXPONENT = 0x7F80


def encode_f16(name: str, x: np.ndarray) -> dict[str, Any]:
    """Return the wire fields of finite float32 `x` as float16."""
    with np.errstate(over="ignore"):
        half = x.astype(np.float16)
    bits = half.view(np.uint16)
    if ((bits & _F16_EXPONENT) == _F16_EXPONENT).any():
        raise NonFiniteTensor(name, "values of magnitude 65520 or more round to Inf in float16")
    return {"data": bits.astype(_U16, copy=False).tobytes()}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """Return float32 `x` rounded to bfloat16 (nearest, ties to even) as uint16 bit patterns."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))  # no overflow: finite bits <= 0xFF7FFFFF
    return (rounded >> 16).astype(np.uint16)


def encode_bf16(name: str, x: np.ndarray) -> dict[str, Any]:
    """Return the wire fields of finite float32 `x` as bfloat16."""
    bits = bf16_bits(x)
    if ((bits & _BF16_EXPONENT) == _BF16_EXPONENT).any():
        raise NonFiniteTensor(name, "values beyond ±3.3895e38 round to Inf in bfloat16")
    return {"data": bits.astype(_U16, copy=False).tobytes()}


class Halves(Dense):
    """Validated float16 or bfloat16 bit patterns."""

    def __init__(self, bits: np.ndarray, *, brain: bool) -> None:
        self.bits = bits
        self.brain = brain
        self.size = bits.size

    def decode_span(self, start: int, stop: int, out: np.ndarray) -> None:
        """Write the values of elements [start, stop) into `out`."""
        bits = self.bits[start:stop]
        if self.brain:
            out[...] = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            out[...] = bits.view(np.float16)


def parse_f16(name: str, obj: Mapping[str, Any], size: int) -> Halves:
    """Validate a float16 map's fields for `size` elements."""
    return Halves(_bits(name, obj, size, _F16_EXPONENT), brain=False)


def parse_bf16(name: str, obj: Mapping[str, Any], size: int) -> Halves:
    """Validate a bfloat16 map's fields for `size` elements."""
    return Halves(_bits(name, obj, size, _BF16_EXPONENT), brain=True)


def _bits(name: str, obj: Mapping[str, Any], size: int, exponent: int) -> np.ndarray:
    check_keys(name, obj, KEYS)
    bits = bin_field(name, obj, "data", _U16, size).astype(np.uint16, copy=False)
    if ((bits & exponent) == exponent).any():
        raise NonFiniteTensor(name, "contains NaN or Inf")
    return bits
