"""A validated compressed tensor, read whole as float32 or in pieces as float64.

Parsing a wire map checks every field first; the objects here can then no longer fail,
so an aggregator adding a tensor piece by piece into its float64 sums never stops halfway.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Protocol

import numpy as np

__all__ = ["CHUNK", "Decoded", "Dense", "Where", "spans"]

CHUNK = 1 << 16  # elements per piece: temporaries stay in cache
Where = slice | np.ndarray  # the flat positions a piece fills: a span, or sorted indices


class Decoded(Protocol):
    """A validated compressed tensor of `size` elements (flat, C order)."""

    size: int

    def to_float32(self) -> np.ndarray:
        """Return the decoded flat float32 array."""
        ...

    def chunks(self) -> Iterator[tuple[Where, np.ndarray]]:
        """Yield (positions, float64 values) pieces that together cover the nonzeros."""
        ...


def spans(size: int, block_size: int = 1) -> Iterator[tuple[int, int]]:
    """Yield [start, stop) spans of about CHUNK elements, each whole blocks or the short last."""
    step = block_size * max(1, CHUNK // block_size)
    full = size - size % block_size
    for start in range(0, full, step):
        yield start, min(start + step, full)
    if full < size:
        yield full, size


class Dense(ABC):
    """A tensor decoded span by span; subclasses write one span's values."""

    size: int
    block_size: int = 1

    @abstractmethod
    def decode_span(self, start: int, stop: int, out: np.ndarray) -> None:
        """Write the values of elements [start, stop) into `out` (float32 or float64)."""

    def to_float32(self) -> np.ndarray:
        """Return the decoded flat float32 array."""
        out = np.empty(self.size, np.float32)
        for start, stop in spans(self.size, self.block_size):
            self.decode_span(start, stop, out[start:stop])
        return out

    def chunks(self) -> Iterator[tuple[Where, np.ndarray]]:
        """Yield (span, float64 values) pieces covering the tensor."""
        for start, stop in spans(self.size, self.block_size):
            out = np.empty(stop - start, np.float64)
            self.decode_span(start, stop, out)
            yield slice(start, stop), out
