"""FedTrimmedAvg (Yin et al. 2018, https://arxiv.org/abs/1803.01498): coordinate-wise trimmed mean.

Unweighted, as in the paper: each coordinate of the next model is the mean of that
coordinate over the round's updates once the int(beta * n) lowest and the int(beta * n)
highest values are left out (Flower's FedTrimmedAvg semantics; beta 0 is the plain mean).
Like FedMedian it works block by block over the memory-mapped updates, so beyond the
mappings the memory used is one result plus N blocks of float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import ClassVar

import numpy as np

from aggregator_service.strategy.aggregate import trimmed_mean
from aggregator_service.strategy.base import (
    AggregationError,
    BaseStrategy,
    ClientUpdate,
    held_updates,
)
from aggregator_service.strategy.fedmedian import coordinatewise

__all__ = ["FedTrimmedAvg"]


class FedTrimmedAvg(BaseStrategy):
    """The coordinate-wise beta-trimmed mean of the round's updates (integer tensors: maximum)."""

    name: ClassVar[str] = "fedtrimmedavg"

    def __init__(self, *, beta: float = 0.2) -> None:
        self.beta = beta

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return the trimmed mean of `updates`, in the model's dtypes."""
        held = held_updates(server_round, updates)
        cut = int(self.beta * len(held))
        if len(held) - 2 * cut < 1:
            raise AggregationError(
                f"round {server_round}: beta {self.beta} cuts {cut} of {len(held)} updates "
                "from each end and leaves none; use a beta below 0.5"
            )
        return coordinatewise(current, held, partial(trimmed_mean, beta=self.beta))
