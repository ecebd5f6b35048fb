"""Aggregation strategies: pure numpy, no I/O, imported by nothing else of the service.

Adding a strategy: one file here with a class like `FedAvgM`, its typed parameters in
`shared/config/strategies.py` (one class in the `StrategyConfig` union) and one line in
`STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Mapping

from aggregator_service.strategy.base import (
    AggregationError,
    ClientUpdate,
    Groups,
    Strategy,
    SummedDeltas,
)
from aggregator_service.strategy.dp_fedavg import DPFedAvg
from aggregator_service.strategy.fedavg import FedAvg
from aggregator_service.strategy.fedavgm import FedAvgM
from aggregator_service.strategy.fedmedian import FedMedian
from aggregator_service.strategy.fedopt import FedAdagrad, FedAdam, FedYogi
from aggregator_service.strategy.fedprox import FedProx
from aggregator_service.strategy.fedtrimmedavg import FedTrimmedAvg
from aggregator_service.strategy.krum import Krum
from aggregator_service.strategy.scaffold import Scaffold
from shared.config import StrategyConfig

__all__ = [
    "STRATEGIES",
    "AggregationError",
    "ClientUpdate",
    "DPFedAvg",
    "Groups",
    "Strategy",
    "SummedDeltas",
    "build_strategy",
]

STRATEGIES: Mapping[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedmedian": FedMedian,
    "fedprox": FedProx,
    "scaffold": Scaffold,
    "fedadagrad": FedAdagrad,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "dpfedavg": DPFedAvg,
}


def build_strategy(config: StrategyConfig) -> Strategy:
    """Return a fresh strategy for its config section (name and parameters)."""
    try:
        cls = STRATEGIES[config.name]
    except KeyError:
        valid = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"unknown strategy {config.name!r}; valid names: {valid}") from None
    return cls(**config.model_dump(exclude={"name"}))
