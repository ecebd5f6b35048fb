"""One conformance suite, run against every registered strategy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from aggregator_service.strategy import STRATEGIES, AggregationError, ClientUpdate, build_strategy
from aggregator_service.strategy.base import Strategy
from shared.config import load_config
from shared.wire import TensorSpec, spec_of

Weights = dict[str, np.ndarray]


def _model() -> Weights:
    rng = np.random.default_rng(7)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn.running_mean": rng.standard_normal(4).astype(np.float32),
        "bn.num_batches_tracked": np.array(0, np.int64),
        "head.bias": rng.standard_normal(10).astype(np.float64),
        "mask": np.zeros(5, np.bool_),
    }


def _seeded(rng: np.random.Generator, spec: TensorSpec) -> np.ndarray:
    """A seeded tensor of `spec`: normal values, a few true bools, small integers."""
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(spec.shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(spec.shape) < 0.3
    return rng.integers(0, 50, spec.shape).astype(dtype)


def _round_updates(
    current: Weights, server_round: int, strategy: Strategy, clients: int = 5
) -> list[ClientUpdate]:
    """Deterministic updates of `clients` clients: a seeded step away from `current`, and
    seeded tensors for the groups the strategy's `update_groups` asks for."""
    group_specs = strategy.update_groups(spec_of(current))
    updates = []
    for k in range(clients):
        rng = np.random.default_rng([server_round, k])
        weights: Weights = {}
        for name, array in current.items():
            if np.issubdtype(array.dtype, np.floating):
                step = rng.standard_normal(array.shape) * 0.1
                weights[name] = (array + step).astype(array.dtype)
            elif array.dtype == np.bool_:
                weights[name] = rng.random(array.shape) < 0.3
            else:
                weights[name] = np.asarray(array + rng.integers(0, 50, array.shape))
        groups = {
            group: {name: _seeded(rng, spec) for name, spec in specs.items()}
            for group, specs in group_specs.items()
        }
        updates.append(ClientUpdate(f"client-{k}", 10 * (k + 1), weights, groups))
    return updates


# a known noise seed makes DP-FedAvg's noise, and so its reruns, reproducible
_PARAMETERS = {"dpfedavg": {"noise_seed": 7}}


def _fresh(name: str) -> Strategy:
    rounds_of_5 = {"min_fit_clients": 5, "min_available_clients": 5}  # as _round_updates
    strategy = {"name": name, **_PARAMETERS.get(name, {})}
    return build_strategy(load_config(None, {"strategy": strategy} | rounds_of_5).strategy)


def _flat(groups: Mapping[str, Mapping[str, np.ndarray]]) -> Weights:
    return {
        f"{group}/{name}": a for group, tensors in groups.items() for name, a in tensors.items()
    }


def _run(strategy: Strategy, current: Weights, rounds: range) -> list[Weights]:
    models = []
    for server_round in rounds:
        updates = _round_updates(current, server_round, strategy)
        current = strategy.aggregate(server_round, current, updates)
        models.append(current)
    return models


@pytest.fixture(params=sorted(STRATEGIES))
def name(request: pytest.FixtureRequest) -> str:
    """Every registered strategy's config name."""
    return str(request.param)


class TestEveryStrategy:
    """What every strategy must do, whatever its rule."""

    def test_names_shapes_and_dtypes_are_kept(self, name: str) -> None:
        current, strategy = _model(), _fresh(name)
        result = strategy.aggregate(1, current, _round_updates(current, 1, strategy))
        assert list(result) == list(current)
        for key, array in current.items():
            assert result[key].shape == array.shape, key
            assert result[key].dtype == array.dtype, key

    def test_integer_and_bool_tensors_take_the_maximum(self, name: str) -> None:
        current, strategy = _model(), _fresh(name)
        updates = _round_updates(current, 1, strategy)
        result = strategy.aggregate(1, current, updates)
        counts = [int(u.weights["bn.num_batches_tracked"]) for u in updates]
        assert int(result["bn.num_batches_tracked"]) == max(counts)
        masks = np.stack([u.weights["mask"] for u in updates])
        np.testing.assert_array_equal(result["mask"], masks.any(axis=0))

    def test_an_empty_round_is_refused(self, name: str) -> None:
        with pytest.raises(AggregationError, match="no update"):
            _fresh(name).aggregate(3, _model(), [])

    def test_inputs_are_only_read(self, name: str) -> None:
        current, strategy = _model(), _fresh(name)
        updates = _round_updates(current, 1, strategy)
        grouped = (a for u in updates for group in u.groups.values() for a in group.values())
        for array in [*current.values(), *(a for u in updates for a in u.weights.values())]:
            array.flags.writeable = False  # as journal memory maps are
        for array in grouped:
            array.flags.writeable = False
        strategy.aggregate(1, current, updates)

    def test_reruns_are_bit_identical(self, name: str) -> None:
        first = _run(_fresh(name), _model(), range(1, 4))
        second = _run(_fresh(name), _model(), range(1, 4))
        for a, b in zip(first, second, strict=True):
            for key in a:
                assert a[key].tobytes() == b[key].tobytes(), key

    def test_a_restart_from_the_saved_state_changes_nothing(self, name: str) -> None:
        straight = _fresh(name)
        uninterrupted = _run(straight, _model(), range(1, 5))
        before = _fresh(name)
        after_two = _run(before, _model(), range(1, 3))[-1]
        saved = {k: np.array(v) for k, v in before.state().items()}  # as a checkpoint holds
        restarted = _fresh(name)
        restarted.load_state(saved)
        resumed = _run(restarted, after_two, range(3, 5))
        for key in uninterrupted[-1]:
            assert uninterrupted[-1][key].tobytes() == resumed[-1][key].tobytes(), key
        for ours, theirs in [
            (straight.state(), restarted.state()),
            (_flat(straight.published_groups()), _flat(restarted.published_groups())),
        ]:
            assert ours.keys() == theirs.keys()
            for key in ours:
                assert ours[key].tobytes() == theirs[key].tobytes(), key
