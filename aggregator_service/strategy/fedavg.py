"""FedAvg (McMahan et al. 2017): the num_examples-weighted mean of the round's updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np

from aggregator_service.strategy.base import (
    AggregationError,
    BaseStrategy,
    ClientUpdate,
    SummedDeltas,
)
from aggregator_service.strategy.mean import WeightedMean, is_floating

__all__ = ["FedAvg", "fold_mean"]


def fold_mean(
    server_round: int, current: Mapping[str, np.ndarray], updates: Iterable[ClientUpdate]
) -> dict[str, np.ndarray]:
    """Fold `updates` one at a time into their weighted mean, in the model's dtypes."""
    mean = WeightedMean()
    mean.begin_round(server_round, current)
    for update in updates:
        mean.accumulate(update.weights, update.num_examples)
    if mean.num_updates == 0:
        raise AggregationError(f"round {server_round}: no update to aggregate")
    return mean.finalize()


class FedAvg(BaseStrategy):
    """Weighted federated averaging; no state across rounds."""

    name: ClassVar[str] = "fedavg"

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return the weighted mean of `updates`."""
        return fold_mean(server_round, current, updates)

    def aggregate_sum(
        self, server_round: int, current: Mapping[str, np.ndarray], summed: SummedDeltas
    ) -> dict[str, np.ndarray]:
        """Return x + delta_sum / total_weight; integer and bool tensors stay as they are."""
        if summed.num_clients < 1 or summed.total_weight <= 0:
            raise AggregationError(f"round {server_round}: no update to aggregate")
        return {
            name: (x + np.asarray(summed.delta_sum[name]) / summed.total_weight).astype(x.dtype)
            if is_floating(x.dtype)
            else np.array(x)
            for name, x in current.items()
        }
