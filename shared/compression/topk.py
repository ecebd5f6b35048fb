"""Top-k sparsification: the k elements of largest magnitude, as sorted indices and values.

k = max(1, round(fraction * size)) for a non-empty tensor (round half to even), at most
size. The k largest |x| are kept; among equal magnitudes the lower index goes first. The
indices, ascending, travel as gaps: the first index, then each index minus the one before
(so every gap after the first is >= 1), each gap an unsigned LEB128 varint (varint.py).
The values, in index order, are float32 (exact) or an 8-bit blockwise map (blockwise.py).
Decoding puts the values at their indices and zeros everywhere else.

Wire fields: "nnz" (int, the number of indices, 0 to size), "indices" (bin of nnz varints),
"values": a bin of nnz little-endian float32, or a q8 map of shape [nnz] (the keys of a
compressed tensor map: "encoding": "q8", "dtype": "float32", "shape": [nnz], ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from shared.compression.blockwise import Blockwise, parse_blockwise, quantize
from shared.compression.decoded import Where
from shared.compression.errors import EncodingError
from shared.compression.fields import (
    COMMON_KEYS,
    F32,
    bin_field,
    check_header,
    check_keys,
    int_field,
    raw_bin,
)
from shared.compression.varint import decode_uvarints, encode_uvarints, varint_length
from shared.errors import NonFiniteTensor, TensorError

__all__ = ["KEYS", "VALUES", "Sparse", "parse_topk", "sparsify", "top_k", "top_k_count"]

KEYS = COMMON_KEYS | {"nnz", "indices", "values"}
VALUES = ("float32", "q8")


def top_k_count(size: int, fraction: float) -> int:
    """Return k: max(1, round(fraction * size)), at most size (0 for an empty tensor)."""
    return min(size, max(1, round(fraction * size)))


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Return the ascending indices of the k largest |x| (flat, finite); ties: lower index."""
    if k >= x.size:
        return np.arange(x.size)
    if k == 0:
        return np.zeros(0, np.int64)
    magnitude = np.abs(x)
    threshold = np.partition(magnitude, x.size - k)[x.size - k]  # the k-th largest
    keep = magnitude > threshold
    ties = np.flatnonzero(magnitude == threshold)[: k - int(keep.sum())]
    keep[ties] = True
    return np.flatnonzero(keep)


def sparsify(
    name: str,
    x: np.ndarray,
    *,
    fraction: float,
    values: str,
    block_size: int,
    scheme: str,
    rounding: str,
    rng: np.random.Generator | None,
) -> dict[str, Any]:
    """Return the wire fields of flat, finite float32 `x` sparsified to its top k."""
    indices = top_k(x, top_k_count(x.size, fraction))
    gaps = np.diff(indices, prepend=0)
    kept = x[indices]
    packed: bytes | dict[str, Any] = kept.astype(F32).tobytes()
    if values == "q8":
        fields = quantize(
            name, kept, bits=8, block_size=block_size, scheme=scheme, rounding=rounding, rng=rng
        )
        packed = {"encoding": "q8", "dtype": "float32", "shape": [kept.size], **fields}
    return {"nnz": int(indices.size), "indices": encode_uvarints(gaps), "values": packed}


class Sparse:
    """Validated indices and values of one top-k tensor."""

    def __init__(self, size: int, indices: np.ndarray, values: np.ndarray | Blockwise) -> None:
        self.size = size
        self.indices = indices
        self.values = values

    def _values(self, dtype: type[np.floating[Any]]) -> np.ndarray:
        if isinstance(self.values, Blockwise):
            return self.values.to_float32().astype(dtype, copy=False)
        return self.values.astype(dtype)

    def to_float32(self) -> np.ndarray:
        """Return the decoded flat float32 array: zeros but at the indices."""
        out = np.zeros(self.size, np.float32)
        out[self.indices] = self._values(np.float32)
        return out

    def chunks(self) -> Iterator[tuple[Where, np.ndarray]]:
        """Yield the indices and their float64 values, as one piece."""
        if isinstance(self.values, Blockwise):
            values = np.concatenate([v for _, v in self.values.chunks()] or [np.zeros(0)])
        else:
            values = self.values.astype(np.float64)
        yield self.indices, values


def parse_topk(name: str, obj: Mapping[str, Any], size: int) -> Sparse:
    """Validate a top-k map's fields for `size` elements."""
    check_keys(name, obj, KEYS)
    nnz = int_field(name, obj, "nnz", 0, size)
    raw = raw_bin(name, obj, "indices")
    gaps = decode_uvarints(name, raw, nnz, varint_length(max(size - 1, 0)))
    if nnz and (gaps >= size).any():
        raise EncodingError(name, f"an index is out of range for {size} elements")
    if nnz > 1 and not gaps[1:].all():
        raise EncodingError(name, "indices must increase: a gap of 0 after the first")
    if nnz * size >= 2**64 and gaps.sum(dtype=np.float64) >= 2.0**63:  # else no overflow
        raise EncodingError(name, f"indices run past {size} elements")
    indices = np.cumsum(gaps).astype(np.int64)
    if nnz and indices[-1] >= size:
        raise EncodingError(name, f"index {indices[-1]} is out of range for {size} elements")
    return Sparse(size, indices, _parse_values(name, obj, nnz))


def _parse_values(name: str, obj: Mapping[str, Any], nnz: int) -> np.ndarray | Blockwise:
    packed = obj["values"]
    if not isinstance(packed, dict):
        values = bin_field(name, obj, "values", F32, nnz)
        if not np.isfinite(values).all():
            raise NonFiniteTensor(name, "values hold NaN or Inf")
        return values
    try:
        if packed.get("encoding") != "q8":
            raise EncodingError(name, f"encoding must be q8, got {packed.get('encoding')!r:.20}")
        check_header(name, packed, (nnz,))
        return parse_blockwise(name, packed, nnz, 8)
    except TensorError as exc:
        raise type(exc)(name, f"values: {exc.problem}") from None
