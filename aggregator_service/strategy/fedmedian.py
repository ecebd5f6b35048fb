"""FedMedian (Yin et al. 2018, https://arxiv.org/abs/1803.01498): coordinate-wise median.

Unweighted, as in the paper: each coordinate of the next model is the median of that
coordinate over the round's updates, so a minority of arbitrarily bad updates cannot drag
it far. The round's updates are memory-mapped journal files; the median is taken block by
block, so beyond the mappings the memory used is one result plus N blocks of float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar

import numpy as np

from aggregator_service.strategy.aggregate import coordinate_median, elementwise_max
from aggregator_service.strategy.base import (
    BaseStrategy,
    ClientUpdate,
    held_updates,
)
from aggregator_service.strategy.mean import is_floating

__all__ = ["BLOCK", "FedMedian", "coordinatewise"]

BLOCK = 1 << 16  # coordinates per step: N x 512 KiB of float64 at a time

CoordinateRule = Callable[[Sequence[np.ndarray]], np.ndarray]  # N blocks -> one, float64


def coordinatewise(
    current: Mapping[str, np.ndarray], held: Sequence[ClientUpdate], rule: CoordinateRule
) -> dict[str, np.ndarray]:
    """Apply a coordinate-wise `rule` to the updates block by block (integer tensors: maximum)."""
    result: dict[str, np.ndarray] = {}
    for name, weights in current.items():
        arrays = [u.weights[name].reshape(-1) for u in held]
        if not is_floating(weights.dtype):
            result[name] = elementwise_max(arrays).astype(weights.dtype).reshape(weights.shape)
            continue
        out = np.empty(weights.size, weights.dtype)
        for start in range(0, weights.size, BLOCK):
            out[start : start + BLOCK] = rule([a[start : start + BLOCK] for a in arrays])
        result[name] = out.reshape(weights.shape)
    return result


class FedMedian(BaseStrategy):
    """The coordinate-wise median of the round's updates (integer tensors: the maximum)."""

    name: ClassVar[str] = "fedmedian"

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return the coordinate-wise median of `updates`, in the model's dtypes."""
        held = held_updates(server_round, updates)
        return coordinatewise(current, held, coordinate_median)
