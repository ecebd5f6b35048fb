"""Blockwise quantization to 8 or 4 bits: a float32 scale (and min) per block of elements.

The elements in C order are cut into blocks of `block_size` (64 to 4096; the last block
may be shorter). Per block, with Q = 2^(bits-1) - 1 and L = 2^bits - 1:

- absmax (symmetric): scale = max|x| / Q, code = round(x / scale) in [-Q, Q] (signed,
  two's complement), decoded x' = code * scale;
- minmax (affine): scale = (max x - min x) / L, code = round((x - min) / scale) in [0, L]
  (unsigned), decoded x' = min + code * scale, min stored as float32 beside the scale.

Scales are rounded up to float32, so no code needs clipping in exact arithmetic; a block
whose scale is 0 has all codes 0. Rounding is to nearest, ties to even (|x - x'| <= scale
/ 2), or stochastic, floor(q + u) with u uniform in [0, 1) drawn per element in C order
from the caller's generator (unbiased, E[x'] = x, and |x - x'| < scale); both bounds hold
up to float32 rounding of the arithmetic. Values beyond ±2^64 are refused. 4-bit codes go
two per byte: element 2i in the low nibble of byte i, element 2i + 1 in the high nibble.

Wire fields: "block_size" (int), "scheme" ("absmax" or "minmax"), "mins" (minmax only) and
"scales" (bins of one little-endian float32 per block), "data" (bin of the codes: one byte
each for 8 bits, ceil(size / 2) bytes for 4 bits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.compression.decoded import Dense, spans
from shared.compression.errors import EncodingError
from shared.compression.fields import (
    COMMON_KEYS,
    F32,
    MAX_MAGNITUDE,
    bin_field,
    bounded_floats,
    check_keys,
    choice_field,
    int_field,
)

__all__ = [
    "BASE_KEYS",
    "MAX_BLOCK",
    "MIN_BLOCK",
    "ROUNDINGS",
    "SCHEMES",
    "Blockwise",
    "code_range",
    "pack_nibbles",
    "parse_blockwise",
    "quantize",
    "unpack_nibbles",
]

SCHEMES = ("absmax", "minmax")
ROUNDINGS = ("nearest", "stochastic")
MIN_BLOCK, MAX_BLOCK = 64, 4096
BASE_KEYS = COMMON_KEYS | {"block_size", "scheme", "scales", "data"}


def code_range(bits: int, scheme: str) -> tuple[int, int]:
    """Return the lowest and highest code: -Q and Q for absmax, 0 and L for minmax."""
    if scheme == "absmax":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def quantize(
    name: str,
    x: np.ndarray,
    *,
    bits: int,
    block_size: int,
    scheme: str,
    rounding: str,
    rng: np.random.Generator | None,
) -> dict[str, Any]:
    """Return the wire fields of flat, finite float32 `x` quantized blockwise."""
    low, high = code_range(bits, scheme)
    mins, scales = _block_params(name, x, block_size, scheme, high)
    divisors = np.where(scales > 0, scales, np.float32(1))
    noise = None
    if rounding == "stochastic":
        if rng is None:
            raise ValueError("stochastic rounding needs a seeded numpy Generator")
        noise = rng.random(x.size, np.float32)
    codes = np.empty(x.size, np.int8 if low < 0 else np.uint8)
    for start, stop in spans(x.size, block_size):
        width = min(block_size, stop - start)
        blocks = slice(start // block_size, -(-stop // block_size))
        q = x[start:stop].reshape(-1, width)
        q = q - mins[blocks, None] if mins is not None else q.copy()  # (blocks, width)
        q /= divisors[blocks, None]
        if noise is None:
            np.rint(q, out=q)
        else:
            q += noise[start:stop].reshape(-1, width)
            np.floor(q, out=q)
        np.clip(q, low, high, out=q)
        np.copyto(codes[start:stop], q.reshape(-1), casting="unsafe")
    fields: dict[str, Any] = {"block_size": block_size, "scheme": scheme}
    if mins is not None:
        fields["mins"] = mins.astype(F32).tobytes()
    fields["scales"] = scales.astype(F32).tobytes()
    fields["data"] = codes.tobytes() if bits == 8 else pack_nibbles(codes)
    return fields


def _block_params(
    name: str, x: np.ndarray, block_size: int, scheme: str, high: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """Return each block's min (minmax only) and its scale: its range over `high` steps."""
    if x.size == 0:
        return (np.zeros(0, np.float32) if scheme == "minmax" else None), np.zeros(0, np.float32)
    starts = np.arange(0, x.size, block_size)
    maxs = np.maximum.reduceat(x, starts).astype(np.float64)
    mins = np.minimum.reduceat(x, starts)
    if max(maxs.max(), -mins.min()) > MAX_MAGNITUDE:
        raise EncodingError(name, "values beyond ±2^64 cannot be quantized; send float32")
    if scheme == "absmax":
        return None, _round_up(np.maximum(np.abs(maxs), np.abs(mins)) / high)
    return mins, _round_up((maxs - mins) / high)


def _round_up(values: np.ndarray) -> np.ndarray:
    """Return float64 `values` as float32, rounded up where the cast rounded down."""
    out = values.astype(np.float32)
    down = out < values
    out[down] = np.nextafter(out[down], np.float32(np.inf))
    return out


def pack_nibbles(codes: np.ndarray) -> bytes:
    """Pack 4-bit codes two per byte: element 2i in the low nibble, 2i + 1 in the high."""
    nibbles = codes.view(np.uint8) & 0x0F
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def unpack_nibbles(packed: np.ndarray, *, signed: bool) -> np.ndarray:
    """Return the 2 * len(packed) codes of packed bytes, signed ones as two's complement."""
    out = np.empty((packed.size, 2), np.uint8)
    np.bitwise_and(packed, 0x0F, out=out[:, 0])
    np.right_shift(packed, 4, out=out[:, 1])
    flat = out.reshape(-1)
    return (flat ^ 8).view(np.int8) - 8 if signed else flat


class Blockwise(Dense):
    """Validated codes, scales and mins of one blockwise-quantized tensor."""

    def __init__(
        self,
        data: np.ndarray,
        *,
        size: int,
        bits: int,
        block_size: int,
        scales: np.ndarray,
        mins: np.ndarray | None,
    ) -> None:
        self.data = data if bits == 4 or mins is not None else data.view(np.int8)
        self.size = size
        self.bits = bits
        self.block_size = block_size
        self.scales = scales
        self.mins = mins

    def codes(self, start: int, stop: int) -> np.ndarray:
        """Return the codes of elements [start, stop); `start` is even."""
        if self.bits == 8:
            return self.data[start:stop]
        packed = self.data[start // 2 : (stop + 1) // 2]
        return unpack_nibbles(packed, signed=self.mins is None)[: stop - start]

    def decode_span(self, start: int, stop: int, out: np.ndarray) -> None:
        """Write the values of elements [start, stop), whole blocks, into `out`."""
        width = min(self.block_size, stop - start)
        blocks = slice(start // self.block_size, -(-stop // self.block_size))
        codes = self.codes(start, stop).reshape(-1, width)
        rows = out.reshape(-1, width)
        np.multiply(codes, self.scales[blocks, None], out=rows, dtype=out.dtype)
        if self.mins is not None:
            np.add(rows, self.mins[blocks, None], out=rows, dtype=out.dtype)


def parse_blockwise(name: str, obj: Mapping[str, Any], size: int, bits: int) -> Blockwise:
    """Validate a q8 or q4 map's fields for `size` elements."""
    scheme = choice_field(name, obj, "scheme", SCHEMES)
    check_keys(name, obj, BASE_KEYS | ({"mins"} if scheme == "minmax" else set()))
    block_size = int_field(name, obj, "block_size", MIN_BLOCK, MAX_BLOCK)
    blocks = -(-size // block_size)
    scales = bin_field(name, obj, "scales", F32, blocks)
    bounded_floats(name, "scales", scales, low=0.0)
    mins = None
    if scheme == "minmax":
        mins = bin_field(name, obj, "mins", F32, blocks)
        bounded_floats(name, "mins", mins, low=-MAX_MAGNITUDE)
    data = bin_field(name, obj, "data", np.dtype(np.uint8), -(-size * bits // 8))
    _check_codes(name, data, size, bits, scheme)
    return Blockwise(data, size=size, bits=bits, block_size=block_size, scales=scales, mins=mins)


def _check_codes(name: str, data: np.ndarray, size: int, bits: int, scheme: str) -> None:
    """Refuse the one code absmax never uses (-2^(bits-1)) and a nonzero padding nibble."""
    if not data.size:
        return
    if scheme == "absmax" and bits == 8 and data.view(np.int8).min() == -128:
        raise EncodingError(name, "absmax code -128 is outside -127..127")
    if scheme == "absmax" and bits == 4 and (((data & 0x0F) == 8) | ((data >> 4) == 8)).any():
        raise EncodingError(name, "absmax nibble 8 (code -8) is outside -7..7")
    if bits == 4 and size % 2 and data[-1] >> 4:
        raise EncodingError(name, "the padding nibble after the last code must be 0")
