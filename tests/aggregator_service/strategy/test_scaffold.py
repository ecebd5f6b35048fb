"""Tests of aggregator_service/strategy/scaffold.py on hand-computed values (Algorithm 1)."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator_service.strategy import AggregationError, ClientUpdate, build_strategy
from aggregator_service.strategy.scaffold import (
    CONTROL_DELTA,
    SERVER_CONTROL,
    Scaffold,
    control_step,
    server_step,
)
from shared.config import load_config
from shared.errors import ConfigError
from shared.wire import TensorSpec

Weights = dict[str, np.ndarray]


def _update(
    client_id: str, num_examples: int, y: list[float], dc: list[float], n: int
) -> ClientUpdate:
    weights: Weights = {"w": np.array(y, np.float32), "n": np.array(n, np.int64)}
    return ClientUpdate(client_id, num_examples, weights, {CONTROL_DELTA: {"w": np.array(dc)}})


def _current() -> Weights:
    return {"w": np.array([1.0, 2.0], np.float32), "n": np.array(0, np.int64)}


def test_the_two_steps_of_line_17_by_hand() -> None:
    # x + eta_g * mean(y_i - x): [1, 2] + 0.5 * [2, -1]
    np.testing.assert_array_equal(
        server_step(np.array([1.0, 2.0]), np.array([2.0, -1.0]), 0.5), [2.0, 1.5]
    )
    # c + |S|/N * mean(dc_i): [0.5, -1] + 2/4 * [2, 0]
    stepped = control_step(np.array([0.5, -1.0]), np.array([2.0, 0.0]), 2, 4)
    np.testing.assert_array_equal(stepped, [1.5, -1.0])


def test_two_of_four_clients_move_x_and_c_by_hand() -> None:
    strategy = Scaffold(server_lr=0.5, num_clients=4)
    strategy.load_state({"control/w": np.array([0.5, -1.0])})
    updates = [
        _update("a", 1, [2.0, 2.0], [1.0, 2.0], n=4),
        _update("b", 3, [4.0, 0.0], [3.0, -2.0], n=7),
    ]
    result = strategy.aggregate(1, _current(), updates)
    # unweighted, whatever num_examples: mean(y_i - x) = ([1, 0] + [3, -2]) / 2 = [2, -1]
    # x = [1, 2] + 0.5 * [2, -1]   (FedAvg's weighted mean would be [3.5, 0.5])
    np.testing.assert_array_equal(result["w"], [2.0, 1.5])
    assert result["w"].dtype == np.float32
    assert int(result["n"]) == 7  # the maximum
    assert result["n"].dtype == np.int64
    # c = [0.5, -1] + 2/4 * ([1, 2] + [3, -2]) / 2
    np.testing.assert_array_equal(strategy.state()["control/w"], [1.5, -1.0])
    published = strategy.published_groups()[SERVER_CONTROL]
    assert list(published) == ["w"]
    np.testing.assert_array_equal(published["w"], np.array([1.5, -1.0], np.float32))
    assert published["w"].dtype == np.float32


def test_c_starts_at_zero_published_as_an_empty_group_and_is_restored() -> None:
    strategy = Scaffold(num_clients=3)
    assert strategy.published_groups() == {SERVER_CONTROL: {}}
    assert strategy.state() == {}
    updates = [_update("a", 1, [1.0, 2.0], [0.75, -1.5], n=1)]
    result = strategy.aggregate(1, _current(), updates)
    np.testing.assert_array_equal(result["w"], [1.0, 2.0])  # y = x: x stays
    saved = strategy.state()
    np.testing.assert_array_equal(saved["control/w"], [0.25, -0.5])  # 0 + 1/3 * dc
    assert saved["control/w"].dtype == np.float64
    restarted = Scaffold(num_clients=3)
    restarted.load_state({**saved, "velocity/w": np.ones(2)})  # other keys are not c's
    assert restarted.state().keys() == saved.keys()
    np.testing.assert_array_equal(restarted.state()["control/w"], saved["control/w"])


def test_updates_carry_dc_over_the_floating_tensors() -> None:
    model = {
        "fc.weight": TensorSpec((3, 2), "float32"),
        "bn.num_batches_tracked": TensorSpec((), "int64"),
        "head.bias": TensorSpec((3,), "float64"),
    }
    expected = {"fc.weight": model["fc.weight"], "head.bias": model["head.bias"]}
    assert Scaffold(num_clients=2).update_groups(model) == {CONTROL_DELTA: expected}


def test_more_updates_than_clients_is_an_error_naming_num_clients() -> None:
    strategy = Scaffold(num_clients=1)
    updates = [_update(c, 1, [1.0, 1.0], [0.0, 0.0], n=0) for c in ("a", "b")]
    with pytest.raises(AggregationError, match="num_clients=1"):
        strategy.aggregate(4, _current(), updates)
    with pytest.raises(ConfigError, match="num_clients"):
        Scaffold()


def test_n_defaults_to_the_partitions_and_the_config_builds_the_strategy() -> None:
    config = load_config(None, {"num_partitions": 7, "strategy": {"name": "scaffold"}})
    strategy = build_strategy(config.strategy)
    assert isinstance(strategy, Scaffold)
    assert (strategy.num_clients, strategy.server_lr) == (7, 1.0)
    explicit = {"name": "scaffold", "num_clients": 12, "server_lr": 0.5}
    strategy = build_strategy(load_config(None, {"strategy": explicit}).strategy)
    assert isinstance(strategy, Scaffold)
    assert (strategy.num_clients, strategy.server_lr) == (12, 0.5)
