"""Updates sent as deltas (the compression extension): checked at arrival, rebuilt at the close.

A delta update's `weights` hold trained - global for each floating tensor (float32 ones
plain or as compressed tensor maps, shared/compression) and the values of integer and
bool tensors. `check_deltas` validates such a map once, when the update arrives, against
the model's spec. When the round closes the update
reaches the strategy with both forms: its raw maps (`ClientUpdate.deltas`), which the
weighted mean folds straight into its float64 sums, and `RebuiltWeights`, global +
delta decoded tensor by tensor for the rules that read full weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from shared.compression import check_update, decode_tensor, is_compressed, wire_nbytes
from shared.wire import TensorSpec

__all__ = ["RebuiltWeights", "check_deltas"]


def check_deltas(raw: Mapping[str, Any], spec: Mapping[str, TensorSpec]) -> int:
    """Validate a delta update's tensors; return how many bytes plain tensors would add.

    That is, over the compressed maps, their plain data bytes less their payload bytes
    (the framing counts as sent). The deltas of finite float32 weights cannot make the
    rebuilt weights overflow: a finite delta plus a weight below 2**103 rounds to at
    most float32's largest value, so finite maps are all that is checked.
    """
    check_update(raw, spec)
    expanded = 0
    for name, expected in spec.items():
        if is_compressed(raw[name]):
            plain = math.prod(expected.shape) * np.dtype(expected.dtype).itemsize
            expanded += plain - wire_nbytes(raw[name])
    return expanded


class RebuiltWeights(Mapping[str, np.ndarray]):
    """A checked delta update's full weights, global + delta, decoded on each read.

    Floating tensors are added in the model's dtype (one rounding); integer and bool
    tensors are the update's own values. Nothing is kept: a rule that reads a tensor
    twice decodes it twice, and memory holds one decoded tensor per read in flight.
    """

    def __init__(
        self,
        raw: Mapping[str, Any],
        spec: Mapping[str, TensorSpec],
        current: Mapping[str, np.ndarray],
    ) -> None:
        self._raw = raw
        self._spec = spec
        self._current = current

    def __getitem__(self, name: str) -> np.ndarray:
        expected = self._spec[name]
        delta = decode_tensor(name, self._raw[name], expected)
        if not _floating(expected):
            return delta
        global_weights = self._current[name]
        rebuilt: np.ndarray = np.add(global_weights, delta, dtype=global_weights.dtype)
        rebuilt.flags.writeable = False
        return rebuilt

    def __iter__(self) -> Iterator[str]:
        return iter(self._spec)

    def __len__(self) -> int:
        return len(self._spec)


def _floating(spec: TensorSpec) -> bool:
    return bool(np.issubdtype(np.dtype(spec.dtype), np.floating))
