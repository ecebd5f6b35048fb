"""Tests of aggregator_service/strategy/fedprox.py: FedAvg on the server, mu to the clients."""

from __future__ import annotations

import numpy as np

from aggregator_service.strategy import ClientUpdate, build_strategy
from aggregator_service.strategy.fedprox import FedProx
from shared.config import load_config


def test_the_server_rule_is_the_weighted_mean_and_mu_is_kept() -> None:
    strategy = build_strategy(
        load_config(None, {"strategy": {"name": "fedprox", "mu": 0.1}}).strategy
    )
    assert isinstance(strategy, FedProx)
    assert strategy.mu == 0.1
    current: dict[str, np.ndarray] = {"w": np.zeros(2, np.float32), "n": np.array(0, np.int64)}
    updates = [
        ClientUpdate("a", 1, {"w": np.array([1.0, 2.0], np.float32), "n": np.array(4, np.int64)}),
        ClientUpdate("b", 3, {"w": np.array([3.0, 6.0], np.float32), "n": np.array(7, np.int64)}),
    ]
    result = strategy.aggregate(1, current, updates)
    np.testing.assert_array_equal(result["w"], [2.5, 5.0])  # (1 * [1, 2] + 3 * [3, 6]) / 4
    assert int(result["n"]) == 7
    assert strategy.state() == {}
    assert strategy.published_groups() == {}  # protocol 1: mu travels in the round config
