"""Tests of FedTrimmedAvg (strategy/fedtrimmedavg.py) on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator_service.strategy import AggregationError, ClientUpdate, build_strategy
from aggregator_service.strategy.aggregate import trimmed_mean
from aggregator_service.strategy.fedmedian import BLOCK
from aggregator_service.strategy.fedtrimmedavg import FedTrimmedAvg
from shared.config import load_config
from shared.errors import ConfigError


def test_trimmed_mean_by_hand() -> None:
    arrays = [np.array([v, w]) for v, w in [(1, -50), (100, 3), (3, 0), (2, 2), (4, 1)]]
    # n 5, beta 0.2: cut 1 from each end. [1, 2, 3, 4, 100] -> mean(2, 3, 4) = 3;
    # [-50, 0, 1, 2, 3] -> mean(0, 1, 2) = 1
    np.testing.assert_array_equal(trimmed_mean(arrays, 0.2), [3.0, 1.0])
    # beta 0: the plain mean, (110 / 5, -44 / 5)
    np.testing.assert_array_equal(trimmed_mean(arrays, 0.0), [22.0, -8.8])
    # beta 0.4: cut 2 from each end, the median
    np.testing.assert_array_equal(trimmed_mean(arrays, 0.4), [3.0, 1.0])
    # n 4, beta 0.2: int(0.8) = 0, nothing cut: (1 + 100 + 3 + 2) / 4
    assert trimmed_mean(arrays[:4], 0.2)[0] == 26.5


def test_fedtrimmedavg_ignores_one_outlier_per_end_and_keeps_dtypes() -> None:
    current: dict[str, np.ndarray] = {"w": np.zeros(2, np.float32), "n": np.array(0, np.int64)}
    rows = [([1, -1e6], 3), ([2, 1], 9), ([3, 2], 1), ([1e6, 3], 4), ([4, 4], 2)]
    updates = [
        ClientUpdate(f"c{i}", 10 * (i + 1), {"w": np.array(w, np.float32), "n": np.array(n)})
        for i, (w, n) in enumerate(rows)
    ]
    result = FedTrimmedAvg(beta=0.2).aggregate(1, current, updates)
    # unweighted: mean(2, 3, 4) = 3 and mean(1, 2, 3) = 2, whatever num_examples says
    np.testing.assert_array_equal(result["w"], [3.0, 2.0])
    assert result["w"].dtype == np.float32
    assert int(result["n"]) == 9
    assert result["n"].dtype == np.int64


def test_fedtrimmedavg_over_many_blocks_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    shape = (2, BLOCK + 7)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(5)]
    updates = [ClientUpdate(f"c{i}", 1, {"w": a}) for i, a in enumerate(arrays)]
    result = FedTrimmedAvg(beta=0.2).aggregate(1, {"w": np.zeros(shape, np.float32)}, updates)
    ordered = np.sort(np.stack([a.astype(np.float64) for a in arrays]), axis=0)
    np.testing.assert_array_equal(result["w"], ordered[1:4].mean(axis=0).astype(np.float32))


def test_a_beta_that_cuts_everything_is_refused() -> None:
    updates = [ClientUpdate(f"c{i}", 1, {"w": np.ones(1, np.float32)}) for i in range(2)]
    with pytest.raises(AggregationError, match=r"beta 0.5 cuts 1 of 2 updates"):
        FedTrimmedAvg(beta=0.5).aggregate(4, {"w": np.zeros(1, np.float32)}, updates)


def test_config() -> None:
    strategy = build_strategy(load_config(None, {"strategy": "fedtrimmedavg"}).strategy)
    assert isinstance(strategy, FedTrimmedAvg)
    assert strategy.beta == 0.2
    for beta in (0.5, -0.1):
        with pytest.raises(ConfigError, match=r"strategy\.fedtrimmedavg\.beta"):
            load_config(None, {"strategy": {"name": "fedtrimmedavg", "beta": beta}})
