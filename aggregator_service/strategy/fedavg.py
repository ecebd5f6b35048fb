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

__all__ = ["FedAvg", "fold_mean", "mean_from_sum"]


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


def mean_from_sum(
    server_round: int, current: Mapping[str, np.ndarray], summed: SummedDeltas
) -> dict[str, np.ndarray]:
    """Return x + delta_sum / total_weight for floating tensors; others stay as in `current`.

    Integer and bool tensors (BatchNorm's counters) are not summed under secure
    aggregation: they keep the global model's values.
    """
    if summed.num_clients < 1 or not summed.total_weight > 0:
        raise AggregationError(
            f"round {server_round}: a sum of {summed.num_clients} updates of total weight "
            f"{summed.total_weight} cannot be averaged"
        )
    if summed.group_sums:
        raise AggregationError(f"round {server_round}: FedAvg takes no update groups")
    result: dict[str, np.ndarray] = {}
    for name, weights in current.items():
        if not is_floating(weights.dtype):
            result[name] = np.array(weights)
            continue
        mean_delta = np.asarray(summed.delta_sum[name], np.float64) / summed.total_weight
        result[name] = (weights.astype(np.float64) + mean_delta).astype(weights.dtype)
    return result


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
        """Return the weighted mean known from the round's sum (secure aggregation)."""
        return mean_from_sum(server_round, current, summed)
