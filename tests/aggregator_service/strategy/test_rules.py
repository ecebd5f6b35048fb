"""Tests of aggregator_service/strategy/aggregate.py and the strategies, on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator_service.strategy import STRATEGIES, ClientUpdate, build_strategy
from aggregator_service.strategy.aggregate import (
    coordinate_median,
    elementwise_max,
    momentum_step,
    weighted_mean,
)
from aggregator_service.strategy.fedavgm import FedAvgM
from aggregator_service.strategy.fedmedian import BLOCK, FedMedian
from shared.config import FedAvgMConfig, load_config


def _updates(*rows: tuple[str, int, dict[str, np.ndarray]]) -> list[ClientUpdate]:
    return [ClientUpdate(cid, n, w) for cid, n, w in rows]


def test_weighted_mean_by_hand() -> None:
    # (1*[1, 2] + 3*[3, 6]) / 4 = [10, 20] / 4
    result = weighted_mean([np.array([1.0, 2.0]), np.array([3.0, 6.0])], [1, 3])
    np.testing.assert_array_equal(result, [2.5, 5.0])


def test_coordinate_median_by_hand() -> None:
    arrays = [np.array([1.0, 9.0, -2.0]), np.array([5.0, 3.0, 0.0]), np.array([100.0, 4.0, 1.0])]
    np.testing.assert_array_equal(coordinate_median(arrays), [5.0, 4.0, 0.0])
    # even count: the midpoint of the two middle values
    np.testing.assert_array_equal(coordinate_median(arrays[:2]), [3.0, 6.0, -1.0])


def test_elementwise_max_by_hand() -> None:
    result = elementwise_max([np.array([5, 1, 9]), np.array([2, 8, 9])])
    np.testing.assert_array_equal(result, [5, 8, 9])


def test_momentum_step_by_hand() -> None:
    current, aggregate = np.array([1.0, 2.0]), np.array([0.5, 2.5])
    # first round: v = delta = [0.5, -0.5]; next = current - 1.0 * v
    stepped, velocity = momentum_step(current, aggregate, None, server_lr=1.0, momentum=0.9)
    np.testing.assert_array_equal(velocity, [0.5, -0.5])
    np.testing.assert_array_equal(stepped, [0.5, 2.5])
    # second round from [0.5, 2.5] to aggregate [0.25, 2.5]: delta [0.25, 0]
    # v = 0.9 * [0.5, -0.5] + [0.25, 0] = [0.7, -0.45]; next = [0.5, 2.5] - 0.5 * v
    stepped, velocity = momentum_step(
        stepped, np.array([0.25, 2.5]), velocity, server_lr=0.5, momentum=0.9
    )
    np.testing.assert_allclose(velocity, [0.7, -0.45], rtol=0, atol=1e-15)
    np.testing.assert_allclose(stepped, [0.15, 2.725], rtol=0, atol=1e-15)


def test_fedavgm_with_no_momentum_and_unit_lr_is_fedavg() -> None:
    current: dict[str, np.ndarray] = {
        "w": np.array([1.0, 1.0], np.float32),
        "n": np.array(0, np.int64),
    }
    updates = _updates(
        ("a", 1, {"w": np.array([1.0, 2.0], np.float32), "n": np.array(4, np.int64)}),
        ("b", 3, {"w": np.array([3.0, 6.0], np.float32), "n": np.array(7, np.int64)}),
    )
    fedavg = build_strategy(load_config(None, {"strategy": "fedavg"}).strategy)
    plain = FedAvgM(server_lr=1.0, momentum=0.0).aggregate(1, current, updates)
    expected = fedavg.aggregate(1, current, updates)
    for name in current:
        np.testing.assert_array_equal(plain[name], expected[name])
        assert plain[name].dtype == current[name].dtype
    np.testing.assert_array_equal(plain["w"], [2.5, 5.0])
    assert int(plain["n"]) == 7  # integer tensors: the maximum, no momentum


def test_fedavgm_carries_its_velocity_through_state() -> None:
    current = {"w": np.array([0.0], np.float32)}
    one = _updates(("a", 1, {"w": np.array([1.0], np.float32)}))
    strategy = FedAvgM(server_lr=1.0, momentum=0.5)
    first = strategy.aggregate(1, current, one)  # delta -1, v -1: w = 1
    np.testing.assert_array_equal(first["w"], [1.0])
    saved = strategy.state()
    assert set(saved) == {"velocity/w"}
    restored = FedAvgM(server_lr=1.0, momentum=0.5)
    restored.load_state(saved)
    # delta = 1 - 1 = 0, v = 0.5 * -1 + 0 = -0.5: w = 1 + 0.5
    second = restored.aggregate(2, first, one)
    np.testing.assert_array_equal(second["w"], [1.5])


def test_fedmedian_ignores_one_outlier_and_keeps_dtypes() -> None:
    current: dict[str, np.ndarray] = {"w": np.zeros(2, np.float32), "n": np.array(0, np.int64)}
    updates = _updates(
        ("a", 10, {"w": np.array([1.0, 2.0], np.float32), "n": np.array(3, np.int64)}),
        ("b", 10, {"w": np.array([2.0, 3.0], np.float32), "n": np.array(5, np.int64)}),
        ("c", 1, {"w": np.array([1e6, -1e6], np.float32), "n": np.array(4, np.int64)}),
    )
    result = FedMedian().aggregate(1, current, updates)
    np.testing.assert_array_equal(result["w"], [2.0, 2.0])
    assert result["w"].dtype == np.float32
    assert int(result["n"]) == 5


def test_fedmedian_over_many_blocks_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    shape = (2, BLOCK + 7)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    updates = [ClientUpdate(f"c{i}", 1, {"w": a}) for i, a in enumerate(arrays)]
    result = FedMedian().aggregate(1, {"w": np.zeros(shape, np.float32)}, updates)
    expected = np.median(np.stack([a.astype(np.float64) for a in arrays]), axis=0)
    np.testing.assert_array_equal(result["w"], expected.astype(np.float32))


def test_strategy_parameters_are_typed_and_named_in_errors() -> None:
    config = load_config(None, {"strategy": {"name": "fedavgm", "server_lr": 0.5}})
    assert config.strategy == FedAvgMConfig(server_lr=0.5, momentum=0.9)
    strategy = build_strategy(config.strategy)
    assert isinstance(strategy, FedAvgM)
    assert (strategy.server_lr, strategy.momentum) == (0.5, 0.9)
    assert load_config(None, {"strategy": "fedmedian"}).strategy.name == "fedmedian"


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"name": "fedavgm", "momentum": 1.5}, "strategy.fedavgm.momentum"),
        ({"name": "fedavgm", "server_lr": 0}, "strategy.fedavgm.server_lr"),
        ({"name": "fedavg", "mu": 0.1}, "unknown key 'strategy.fedavg.mu'"),
        ("bulyan", "'bulyan'"),
    ],
)
def test_bad_strategy_parameters_are_config_errors(strategy: object, message: str) -> None:
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, {"strategy": strategy})


def test_every_registered_strategy_has_a_config() -> None:
    for name in STRATEGIES:
        config = load_config(
            None, {"strategy": name, "min_fit_clients": 3, "min_available_clients": 3}
        )
        assert build_strategy(config.strategy).name == name
