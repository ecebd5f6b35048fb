"""Tests of Krum and multi-Krum (strategy/krum.py) on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator_service.strategy import AggregationError, ClientUpdate, build_strategy
from aggregator_service.strategy.aggregate import krum_scores, squared_distances
from aggregator_service.strategy.fedmedian import BLOCK
from aggregator_service.strategy.krum import Krum, pairwise_squared_distances
from shared.config import load_config
from shared.errors import ConfigError


def _points(*rows: tuple[float, float]) -> list[ClientUpdate]:
    """One update per 2-d point: x in tensor "a", y in tensor "b"; num_examples 1, 2, 3..."""
    return [
        ClientUpdate(
            f"c{i}",
            i + 1,
            {"a": np.array([x], np.float32), "b": np.array([y], np.float32)},
        )
        for i, (x, y) in enumerate(rows)
    ]


CURRENT = {"a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)}


def test_squared_distances_by_hand() -> None:
    block = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    expected = [[0, 25, 1], [25, 0, 20], [1, 20, 0]]  # 3^2 + 4^2; 2^2 + 4^2
    np.testing.assert_array_equal(squared_distances(block), expected)


def test_krum_scores_by_hand() -> None:
    # points 0, 1, 3, 10 on a line: squared distances
    distances = np.array(
        [[0, 1, 9, 100], [1, 0, 4, 81], [9, 4, 0, 49], [100, 81, 49, 0]], np.float64
    )
    # f 0: the n - 2 = 2 nearest: 1 + 9, 1 + 4, 4 + 9, 49 + 81
    np.testing.assert_array_equal(krum_scores(distances, 0), [10, 5, 13, 130])
    # f 1 (needs n > 4, but the rule alone sums the 1 nearest): 1, 1, 4, 49
    np.testing.assert_array_equal(krum_scores(distances, 1), [1, 1, 4, 49])


def test_distances_span_every_floating_tensor_and_every_block() -> None:
    rng = np.random.default_rng(3)
    size = BLOCK + 5
    held = [
        ClientUpdate(
            f"c{i}",
            1,
            {
                "a": rng.standard_normal(size).astype(np.float32),
                "b": rng.standard_normal(3).astype(np.float64),
                "n": np.array(i, np.int64),  # integer tensors take no part
            },
        )
        for i in range(4)
    ]
    current: dict[str, np.ndarray] = {"a": np.zeros(size, np.float32), "b": np.zeros(3)}
    current["n"] = np.array(0, np.int64)
    flat = [np.concatenate([u.weights["a"].astype(np.float64), u.weights["b"]]) for u in held]
    expected = [[np.sum((x - y) ** 2) for y in flat] for x in flat]
    np.testing.assert_allclose(pairwise_squared_distances(current, held), expected, rtol=1e-12)


def test_krum_keeps_the_update_closest_to_its_neighbours() -> None:
    # (0, 0), (1, 0), (0, 3), (10, 10): scores with the 2 nearest, f 0:
    # c0: 1 + 9 = 10; c1: 1 + 10 = 11; c2: 9 + 10 = 19; c3: 181 + 149 = 330
    updates = _points((0, 0), (1, 0), (0, 3), (10, 10))
    strategy = Krum()
    result = strategy.aggregate(1, CURRENT, updates)
    assert strategy.last_selected == ["c0"]
    np.testing.assert_array_equal(result["a"], [0.0])
    np.testing.assert_array_equal(result["b"], [0.0])


def test_multi_krum_takes_the_weighted_mean_of_the_m_best() -> None:
    updates = _points((0, 0), (1, 0), (0, 3), (10, 10))
    strategy = Krum(num_clients_to_keep=2)
    result = strategy.aggregate(1, CURRENT, updates)
    assert strategy.last_selected == ["c0", "c1"]
    # weights 1 and 2: a = (1 * 0 + 2 * 1) / 3, b = 0
    np.testing.assert_allclose(result["a"], [2 / 3], rtol=1e-7)
    np.testing.assert_array_equal(result["b"], [0.0])


def test_krum_with_one_malicious_client_ignores_a_far_update() -> None:
    # n 5 > 2f + 2 = 4; each score sums the n - f - 2 = 2 nearest
    updates = _points((0, 0), (1, 0), (0, 1), (1, 1), (1e6, -1e6))
    strategy = Krum(num_malicious_clients=1, num_clients_to_keep=4)
    result = strategy.aggregate(1, CURRENT, updates)
    # every square corner scores 1 + 1 = 2: ties go to the lower client id
    assert strategy.last_selected == ["c0", "c1", "c2", "c3"]
    # weights 1..4: a = (2 + 4) / 10, b = (3 + 4) / 10
    np.testing.assert_allclose(result["a"], [0.6], rtol=1e-7)
    np.testing.assert_allclose(result["b"], [0.7], rtol=1e-7)


def test_integer_tensors_take_the_maximum_over_every_update() -> None:
    points = _points((0, 0), (1, 0), (0, 3), (10, 10))
    counts = [5, 1, 2, 7]
    updates = [
        ClientUpdate(u.client_id, u.num_examples, {**u.weights, "n": np.array(c, np.int64)})
        for u, c in zip(points, counts, strict=True)
    ]
    result = Krum().aggregate(1, {**CURRENT, "n": np.array(0, np.int64)}, updates)
    assert result["n"].dtype == np.int64
    assert result["n"].shape == ()
    assert int(result["n"]) == 7  # the unselected c3's count, as for every strategy


def test_too_few_updates_for_f_are_refused() -> None:
    updates = _points((0, 0), (1, 0), (0, 3), (10, 10))
    with pytest.raises(AggregationError, match=r"f = 1 needs more than 2f \+ 2 = 4 .* n = 4"):
        Krum(num_malicious_clients=1).aggregate(2, CURRENT, updates)
    with pytest.raises(AggregationError, match="num_clients_to_keep 5 exceeds the 4 updates"):
        Krum(num_clients_to_keep=5).aggregate(2, CURRENT, updates)


def test_config() -> None:
    # every round aggregates at least min_fit_clients updates: the checks are against it
    rounds_of_8 = {"min_fit_clients": 8, "min_available_clients": 8}
    config = load_config(
        None,
        {"strategy": {"name": "krum", "num_malicious_clients": 2, "num_clients_to_keep": 3}}
        | rounds_of_8,
    )
    strategy = build_strategy(config.strategy)
    assert isinstance(strategy, Krum)
    assert (strategy.num_malicious_clients, strategy.num_clients_to_keep) == (2, 3)
    with pytest.raises(ConfigError, match=r"\(3\) needs rounds of more than 8 .* is 8"):
        load_config(None, {"strategy": {"name": "krum", "num_malicious_clients": 3}} | rounds_of_8)
    with pytest.raises(ConfigError, match=r"\(0\) needs rounds of more than 2 .* is 2"):
        load_config(None, {"strategy": "krum"})  # the default min_fit_clients: too few
    with pytest.raises(ConfigError, match=r"num_clients_to_keep \(9\) exceeds min_fit_clients"):
        load_config(None, {"strategy": {"name": "krum", "num_clients_to_keep": 9}} | rounds_of_8)
    with pytest.raises(ConfigError, match=r"strategy\.krum\.num_clients_to_keep"):
        load_config(None, {"strategy": {"name": "krum", "num_clients_to_keep": 0}})
