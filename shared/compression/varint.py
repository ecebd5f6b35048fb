"""Unsigned LEB128 varints, vectorized: 7 bits per byte, least significant group first.

Each byte carries 7 bits of the value in its low bits; its high bit (0x80) is set when
another byte of the same value follows. A value takes the fewest bytes that hold it
(0 is the single byte 0x00); a longer form, whose last byte is 0x00, is refused.
"""

from __future__ import annotations

import numpy as np

from shared.compression.errors import EncodingError

__all__ = ["decode_uvarints", "encode_uvarints", "varint_length"]

_MAX_BYTES = 10  # a uint64 needs at most ceil(64 / 7) bytes


def varint_length(value: int) -> int:
    """Return how many bytes the varint of `value` (>= 0) takes."""
    return max(1, -(-value.bit_length() // 7))


def encode_uvarints(values: np.ndarray) -> bytes:
    """Return the concatenated varints of unsigned `values`."""
    values = values.astype(np.uint64, copy=False)
    lengths = np.ones(values.size, np.int64)
    for shift in range(7, 64, 7):
        lengths += values >= np.uint64(1 << shift)
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), np.uint8)
    for i in range(_MAX_BYTES):
        rows = np.flatnonzero(lengths > i)
        if not rows.size:
            break
        group = (values[rows] >> np.uint64(7 * i)) & np.uint64(0x7F)
        more = (lengths[rows] > i + 1).astype(np.uint64) << np.uint64(7)
        out[starts[rows] + i] = group | more
    return out.tobytes()


def decode_uvarints(name: str, data: np.ndarray, count: int, max_bytes: int) -> np.ndarray:
    """Return the `count` values of the varints filling `data` (uint8), each <= `max_bytes` long."""
    if not count <= data.size <= count * max_bytes:
        raise EncodingError(
            name, f"indices: {data.size} bytes are not {count} varints of 1 to {max_bytes} bytes"
        )
    if count == 0:
        return np.zeros(0, np.uint64)
    if data[-1] & 0x80:
        raise EncodingError(name, "indices: the last varint is truncated")
    ends = np.flatnonzero(data < 0x80)
    if ends.size != count:
        raise EncodingError(name, f"indices hold {ends.size} varints, nnz says {count}")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > max_bytes:
        raise EncodingError(name, f"indices: a varint longer than {max_bytes} bytes")
    if ((lengths > 1) & (data[ends] == 0)).any():
        raise EncodingError(name, "indices: a varint not in its shortest form")
    if lengths.max() == 1:
        return data.astype(np.uint64)
    place = np.arange(data.size) - np.repeat(starts, lengths)
    groups = (data & 0x7F).astype(np.uint64) << (7 * place).astype(np.uint64)
    return np.add.reduceat(groups, starts)
