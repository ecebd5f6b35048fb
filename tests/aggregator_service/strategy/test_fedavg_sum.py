"""FedAvg from the sum of the updates alone (secure aggregation), on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator_service.strategy import AggregationError, SummedDeltas
from aggregator_service.strategy.fedavg import FedAvg


def test_the_step_is_the_weighted_mean_delta() -> None:
    current: dict[str, np.ndarray] = {
        "w": np.array([1.0, 2.0], np.float32),
        "n": np.array(4, np.int64),
    }
    # clients weighted 1 and 2 with deltas (1, 2) and (1, 2): sum (3, 6), total weight 3
    summed = SummedDeltas(2, 3.0, {"w": np.array([3.0, 6.0])})
    result = FedAvg().aggregate_sum(1, current, summed)
    np.testing.assert_array_equal(result["w"], np.array([2.0, 4.0], np.float32))
    assert result["w"].dtype == np.float32
    assert int(result["n"]) == 4


def test_an_empty_sum_is_refused() -> None:
    with pytest.raises(AggregationError, match="no update"):
        FedAvg().aggregate_sum(1, {"w": np.zeros(1)}, SummedDeltas(0, 0.0, {"w": np.zeros(1)}))
