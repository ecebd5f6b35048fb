"""DP-FedAvg on hand-computed values: clipping, the seeded noise, adaptive C, the sum's path."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest
from randomgen import ChaCha

from aggregator_service.strategy import AggregationError, ClientUpdate, DPFedAvg, SummedDeltas
from aggregator_service.strategy.dp_fedavg import adapted_clip_norm, noise_generator
from shared.errors import ConfigError, InvalidUpdate
from shared.privacy.clipping import CLIP_BITS, UNCLIPPED
from shared.privacy.noise import update_noise_multiplier


def _model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(2, np.float64), "steps": np.array(3, np.int64)}


def _update(client: str, w: list[float], steps: int = 5, bit: float | None = None) -> ClientUpdate:
    groups = {CLIP_BITS: {UNCLIPPED: np.array(bit, np.float32)}} if bit is not None else {}
    weights = {"w": np.array(w), "steps": np.array(steps, np.int64)}
    return ClientUpdate(client, 10, weights, groups)


def _strategy(**params: Any) -> DPFedAvg:
    defaults: dict[str, Any] = {"clip_norm": 1.0, "noise_multiplier": 0.0, "clients_per_round": 4}
    return DPFedAvg(**(defaults | params))


def _seeded_normals(noise_seed: int, server_round: int, size: int) -> np.ndarray:
    """The draws the docs specify: ChaCha20 keyed by SHA-256 of the seed and the round."""
    text = f"tributary/dpfedavg-noise/{noise_seed}/{server_round}".encode()
    key = int.from_bytes(hashlib.sha256(text).digest(), "big")
    return np.random.Generator(ChaCha(key=key, rounds=20)).standard_normal(size)


def test_each_delta_is_clipped_to_c_and_the_sum_divided_by_m() -> None:
    # deltas (3, 4) of norm 5 -> (0.6, 0.8); (0.6, 0.8) of norm 1 stays; sum (1.2, 1.6) / m=4
    updates = [_update("a", [3.0, 4.0], steps=5), _update("b", [0.6, 0.8], steps=9)]
    result = _strategy().aggregate(1, _model(), updates)
    np.testing.assert_allclose(result["w"], [0.3, 0.4], rtol=1e-12)
    assert int(result["steps"]) == 9  # integer tensors: the maximum, as the mean rule


def test_the_clip_spans_every_floating_tensor_together() -> None:
    current = {"a": np.zeros(1), "b": np.zeros(1)}
    update = ClientUpdate("a", 1, {"a": np.array([3.0]), "b": np.array([4.0])})
    result = _strategy(clip_norm=2.5, clients_per_round=1).aggregate(1, current, [update])
    np.testing.assert_allclose([result["a"][0], result["b"][0]], [1.5, 2.0], rtol=1e-12)


def test_server_lr_scales_the_step() -> None:
    result = _strategy(server_lr=0.5).aggregate(1, _model(), [_update("a", [0.6, 0.8])])
    np.testing.assert_allclose(result["w"], [0.075, 0.1], rtol=1e-12)


def test_more_updates_than_m_divide_by_their_count() -> None:
    updates = [_update(str(k), [0.0, 1.0]) for k in range(3)]  # a retried round's
    result = _strategy(clients_per_round=2).aggregate(1, _model(), updates)
    np.testing.assert_allclose(result["w"], [0.0, 1.0], rtol=1e-12)


def test_the_noise_is_the_seeded_chacha_stream_times_z_c_over_m() -> None:
    strategy = _strategy(clip_norm=2.0, noise_multiplier=0.5, clients_per_round=2, noise_seed=7)
    result = strategy.aggregate(3, _model(), [_update("a", [0.3, 0.4])])
    noise = 0.5 * 2.0 * _seeded_normals(7, 3, 2)  # std z*C on the sum
    np.testing.assert_array_equal(result["w"], (np.array([0.3, 0.4]) + noise) / 2)


def test_the_key_changes_with_the_round_and_without_a_seed_with_every_call() -> None:
    seeded = [noise_generator(7, r).standard_normal(4) for r in (1, 1, 2)]
    np.testing.assert_array_equal(seeded[0], seeded[1])
    assert not np.array_equal(seeded[0], seeded[2])
    fresh = [noise_generator(None, 1).standard_normal(4) for _ in range(2)]
    assert not np.array_equal(fresh[0], fresh[1])


def test_update_noise_multiplier_leaves_room_for_the_count_noise() -> None:
    # z = 1, sigma_b = 1: (1 - (2 * 1)**-2)**-1/2 = 1 / sqrt(0.75)
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(1 / math.sqrt(0.75), rel=1e-12)
    assert update_noise_multiplier(0.0, 1.0) == 0.0
    with pytest.raises(ConfigError, match="2 \\* clipped_count_stddev"):
        update_noise_multiplier(1.0, 0.5)  # 2 sigma_b = z: the count takes the whole budget


def test_adapted_clip_norm_is_the_geometric_update() -> None:
    # C = 1, b = 0.75, gamma = 0.5, eta_C = 0.2: exp(-0.05)
    value = adapted_clip_norm(1.0, 0.75, target_quantile=0.5, clip_lr=0.2)
    assert value == pytest.approx(0.951229424500714, rel=1e-12)


def test_adaptive_clipping_moves_c_by_the_noised_fraction_of_unclipped_deltas() -> None:
    strategy = _strategy(
        target_quantile=0.5, clip_lr=0.2, clipped_count_stddev=0.5, noise_seed=3, noise_multiplier=0
    )
    updates = [_update("a", [0.3, 0.4]), _update("b", [3.0, 4.0]), _update("c", [0.0, 0.5])]
    strategy.aggregate(2, _model(), updates)
    draws = _seeded_normals(3, 2, 3)  # two for "w" (times std 0), then the count's
    fraction = (2 + 0.5 * draws[2]) / 4  # two of the deltas were within C = 1; m = 4
    expected = math.exp(-0.2 * (fraction - 0.5))
    assert strategy.clip_norm == pytest.approx(expected, rel=1e-12)
    assert float(strategy.state()["clip_norm"]) == strategy.clip_norm


def test_with_client_clipping_the_bits_are_the_clients() -> None:
    strategy = _strategy(
        clipping="client", target_quantile=0.5, clipped_count_stddev=1.0, noise_seed=3
    )
    updates = [_update("a", [0.3, 0.4], bit=0.0), _update("b", [0.0, 0.5], bit=0.0)]
    strategy.aggregate(2, _model(), updates)
    draws = _seeded_normals(3, 2, 3)
    expected = math.exp(-0.2 * ((0 + 1.0 * draws[2]) / 4 - 0.5))
    assert strategy.clip_norm == pytest.approx(expected, rel=1e-12)


def test_the_clip_norm_survives_a_restart() -> None:
    before = _strategy(target_quantile=0.5, clipped_count_stddev=1.0, noise_seed=1)
    before.aggregate(1, _model(), [_update("a", [3.0, 4.0])])
    restarted = _strategy(target_quantile=0.5, clipped_count_stddev=1.0, noise_seed=1)
    restarted.load_state({k: np.array(v) for k, v in before.state().items()})
    assert restarted.clip_norm == before.clip_norm != 1.0


def test_aggregate_sum_adds_the_noise_to_the_clients_sum() -> None:
    strategy = _strategy(
        clipping="client", clip_norm=2.0, noise_multiplier=0.5, clients_per_round=2, noise_seed=5
    )
    summed = SummedDeltas(2, 2.0, {"w": np.array([1.0, -1.0])})
    result = strategy.aggregate_sum(4, _model(), summed)
    noise = 0.5 * 2.0 * _seeded_normals(5, 4, 2)
    np.testing.assert_array_equal(result["w"], (np.array([1.0, -1.0]) + noise) / 2)
    assert int(result["steps"]) == 3  # integer tensors stay as they are


def test_the_sums_path_gives_the_model_the_updates_path_gives() -> None:
    # client-clipped updates (norms 0.5 and 1.0, within C = 1) and adaptive C: the sum of
    # their deltas and bits, as secure aggregation hands it over, takes the same step
    params = {"clipping": "client", "noise_multiplier": 0.5, "target_quantile": 0.5}
    params |= {"clipped_count_stddev": 1.0, "clients_per_round": 2, "noise_seed": 9}
    updates = [_update("a", [0.3, 0.4], bit=1.0), _update("b", [-0.6, 0.8], bit=0.0)]
    by_updates, by_sum = _strategy(**params), _strategy(**params)
    expected = by_updates.aggregate(2, _model(), updates)
    bits = {CLIP_BITS: {UNCLIPPED: np.array(1.0, np.float32)}}
    summed = SummedDeltas(2, 2.0, {"w": np.array([0.3, 0.4]) + np.array([-0.6, 0.8])}, bits)
    result = by_sum.aggregate_sum(2, _model(), summed)
    np.testing.assert_array_equal(result["w"], expected["w"])
    assert by_sum.clip_norm == by_updates.clip_norm != 1.0


def test_aggregate_sum_reads_the_summed_bits() -> None:
    strategy = _strategy(clipping="client", target_quantile=0.5, clipped_count_stddev=1.0)
    summed = SummedDeltas(
        2, 2.0, {"w": np.zeros(2)}, {CLIP_BITS: {UNCLIPPED: np.array(2.0, np.float32)}}
    )
    strategy.aggregate_sum(1, _model(), summed)
    assert strategy.clip_norm != 1.0


@pytest.mark.parametrize(
    ("params", "summed", "message"),
    [
        ({}, SummedDeltas(2, 2.0, {"w": np.zeros(2)}), "clipping: server clips each update"),
        ({"clipping": "client"}, SummedDeltas(2, 30.0, {"w": np.zeros(2)}), "weighs every"),
        ({"clipping": "client"}, SummedDeltas(2, 2.0, {}), "lacks the tensors"),
        ({"clipping": "client"}, SummedDeltas(0, 0.0, {"w": np.zeros(2)}), "no update"),
    ],
)
def test_aggregate_sum_refuses_what_it_cannot_use(
    params: dict[str, Any], summed: SummedDeltas, message: str
) -> None:
    with pytest.raises(AggregationError, match=message):
        _strategy(**params).aggregate_sum(1, _model(), summed)


def test_check_update_refuses_a_delta_over_c_naming_the_norm_and_c() -> None:
    strategy = _strategy(clipping="client", clip_norm=1.0)
    strategy.check_update(_model(), _update("a", [0.6, 0.8]))  # norm 1: taken
    strategy.check_update(_model(), _update("a", [0.6, 0.8005]))  # within the tolerance
    with pytest.raises(InvalidUpdate, match=r"L2 norm 1\.25.*C=1\b") as refused:
        strategy.check_update(_model(), _update("a", [0.75, 1.0]))
    assert refused.value.code == "norm_over_clip"
    _strategy(clip_norm=1.0).check_update(_model(), _update("a", [3.0, 4.0]))  # server clips


def test_check_update_refuses_a_bit_that_is_not_0_or_1() -> None:
    strategy = _strategy(clipping="client", target_quantile=0.5, clipped_count_stddev=1.0)
    with pytest.raises(InvalidUpdate, match="must be 0 or 1"):
        strategy.check_update(_model(), _update("a", [0.1, 0.1], bit=0.5))


def test_client_clipping_sends_c_and_asks_for_bits_only_when_adaptive() -> None:
    fixed = _strategy(clipping="client", clip_norm=0.7)
    assert fixed.client_config() == {"clip_norm": 0.7}
    assert fixed.update_groups({}) == {}
    adaptive = _strategy(clipping="client", target_quantile=0.5, clipped_count_stddev=1.0)
    assert list(adaptive.update_groups({})) == [CLIP_BITS]
    assert _strategy().client_config() == {}


def test_m_is_required() -> None:
    with pytest.raises(ConfigError, match="clients_per_round"):
        DPFedAvg(clip_norm=1.0)
