"""Tests of FedAdagrad, FedAdam and FedYogi (strategy/fedopt.py) on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator_service.strategy import ClientUpdate, build_strategy
from aggregator_service.strategy.aggregate import (
    adagrad_moment,
    adam_moment,
    adaptive_step,
    yogi_moment,
)
from aggregator_service.strategy.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from shared.config import FedAdamConfig, load_config
from shared.errors import ConfigError


def _one(weights: dict[str, np.ndarray], num_examples: int = 1) -> list[ClientUpdate]:
    return [ClientUpdate("a", num_examples, weights)]


def test_second_moments_by_hand() -> None:
    v, delta_sq = np.array([4.0, 1.0]), np.array([1.0, 4.0])
    np.testing.assert_array_equal(adagrad_moment(v, delta_sq), [5.0, 5.0])
    # Adam: 0.5 * v + 0.5 * delta**2
    np.testing.assert_array_equal(adam_moment(v, delta_sq, 0.5), [2.5, 2.5])
    # Yogi: v - 0.5 * delta**2 * sign(v - delta**2): [4 - 0.5, 1 + 2]
    np.testing.assert_array_equal(yogi_moment(v, delta_sq, 0.5), [3.5, 3.0])
    # equal v and delta**2: Yogi keeps v
    np.testing.assert_array_equal(yogi_moment(np.array([2.0]), np.array([2.0]), 0.5), [2.0])


def test_adaptive_step_starts_from_m_zero_and_v_tau_squared() -> None:
    # delta = 1; m = 0.5 * 0 + 0.5 * 1 = 0.5; v = tau**2 + 1 = 1.5625, sqrt 1.25
    # next = 0 + 1.0 * 0.5 / (1.25 + 0.75) = 0.25
    stepped, m, v = adaptive_step(
        np.array([0.0]), np.array([1.0]), None, adagrad_moment, eta=1.0, beta_1=0.5, tau=0.75
    )
    np.testing.assert_array_equal(m, [0.5])
    np.testing.assert_array_equal(v, [1.5625])
    np.testing.assert_array_equal(stepped, [0.25])
    # from those moments, delta = -1.25 (aggregate 0 from 1.25): m = 0.25 - 0.625 = -0.375
    # v = 1.5625 + 1.5625 = 3.125; next = 1.25 + 0.5 * -0.375 / (sqrt(3.125) + 0.75)
    stepped, m, v = adaptive_step(
        np.array([1.25]), np.array([0.0]), (m, v), adagrad_moment, eta=0.5, beta_1=0.5, tau=0.75
    )
    np.testing.assert_array_equal(m, [-0.375])
    np.testing.assert_array_equal(v, [3.125])
    np.testing.assert_allclose(stepped, [1.25 - 0.1875 / (np.sqrt(3.125) + 0.75)], rtol=1e-15)


@pytest.mark.parametrize(
    ("strategy", "update", "expected"),
    [
        # delta 1, m 0.5, v = 0.5625 + 1 = 1.5625: 0.5 / (1.25 + 0.75)
        (FedAdagrad(eta=1.0, beta_1=0.5, tau=0.75), 1.0, 0.25),
        # delta 1, m 0.5, v = 0.5 * 1 + 0.5 * 1 = 1: 0.5 / (1 + 1)
        (FedAdam(eta=1.0, beta_1=0.5, beta_2=0.5, tau=1.0), 1.0, 0.25),
        # delta 2, m 1, v = 0.25 - 0.5 * 4 * sign(0.25 - 4) = 2.25: 1 / (1.5 + 0.5)
        (FedYogi(eta=1.0, beta_1=0.5, beta_2=0.5, tau=0.5), 2.0, 0.5),
    ],
)
def test_first_round_by_hand(strategy: FedOpt, update: float, expected: float) -> None:
    current: dict[str, np.ndarray] = {"w": np.zeros(1, np.float32), "n": np.array(3, np.int64)}
    updates = [
        ClientUpdate("a", 1, {"w": np.array([update], np.float32), "n": np.array(9, np.int64)}),
        ClientUpdate("b", 3, {"w": np.array([update], np.float32), "n": np.array(5, np.int64)}),
    ]
    result = strategy.aggregate(1, current, updates)
    np.testing.assert_array_equal(result["w"], [expected])
    assert result["w"].dtype == np.float32
    assert int(result["n"]) == 9  # integer tensors: the maximum, no step
    assert set(strategy.state()) == {"m/w", "v/w"}


def test_the_pseudo_gradient_is_from_the_weighted_mean() -> None:
    # mean = (1 * 4 + 3 * 0) / 4 = 1: delta 1, as in the one-update FedAdam case above
    updates = [
        ClientUpdate("a", 1, {"w": np.array([4.0], np.float32)}),
        ClientUpdate("b", 3, {"w": np.array([0.0], np.float32)}),
    ]
    strategy = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.5, tau=1.0)
    result = strategy.aggregate(1, {"w": np.array([0.0], np.float32)}, updates)
    np.testing.assert_array_equal(result["w"], [0.25])


def test_fedadam_carries_its_moments_through_state() -> None:
    strategy = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.5, tau=1.0)
    first = strategy.aggregate(1, {"w": np.array([0.0], np.float32)}, _one({"w": np.ones(1)}))
    np.testing.assert_array_equal(first["w"], [0.25])  # m 0.5, v 1
    saved = strategy.state()
    np.testing.assert_array_equal(saved["m/w"], [0.5])
    np.testing.assert_array_equal(saved["v/w"], [1.0])
    assert all(value.dtype == np.float64 for value in saved.values())
    restored = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.5, tau=1.0)
    restored.load_state({key: np.array(value) for key, value in saved.items()})
    # delta = 1.25 - 0.25 = 1; m = 0.25 + 0.5 = 0.75; v = 0.5 + 0.5 = 1: 0.25 + 0.75 / 2
    second = restored.aggregate(2, first, _one({"w": np.array([1.25], np.float32)}))
    np.testing.assert_array_equal(second["w"], [0.625])
    # a fresh strategy (m 0, v tau**2) steps differently: 0.25 + 0.5 / 2
    fresh = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.5, tau=1.0)
    np.testing.assert_array_equal(
        fresh.aggregate(2, first, _one({"w": np.array([1.25], np.float32)}))["w"], [0.5]
    )


def test_defaults_and_config() -> None:
    config = load_config(None, {"strategy": {"name": "fedadam", "eta": 0.1}}).strategy
    assert config == FedAdamConfig(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    strategy = build_strategy(config)
    assert isinstance(strategy, FedAdam)
    assert (strategy.eta, strategy.beta_1, strategy.beta_2, strategy.tau) == (0.1, 0.9, 0.99, 1e-3)
    yogi = build_strategy(load_config(None, {"strategy": "fedyogi"}).strategy)
    assert isinstance(yogi, FedYogi)
    assert (yogi.eta, yogi.beta_1, yogi.beta_2, yogi.tau) == (1e-2, 0.9, 0.99, 1e-3)
    adagrad = build_strategy(load_config(None, {"strategy": "fedadagrad"}).strategy)
    assert isinstance(adagrad, FedAdagrad)
    assert (adagrad.eta, adagrad.beta_1, adagrad.tau) == (1e-2, 0.9, 1e-3)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"name": "fedadam", "eta": 0}, "strategy.fedadam.eta"),
        ({"name": "fedyogi", "beta_2": 1.0}, "strategy.fedyogi.beta_2"),
        ({"name": "fedadagrad", "tau": -1}, "strategy.fedadagrad.tau"),
        ({"name": "fedadagrad", "beta_2": 0.9}, "unknown key 'strategy.fedadagrad.beta_2'"),
        ({"name": "fedadam", "beta_1": 1}, "strategy.fedadam.beta_1"),
    ],
)
def test_bad_parameters_are_config_errors(strategy: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"strategy": strategy})
