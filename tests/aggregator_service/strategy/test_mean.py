"""Tests of aggregator_service/strategy/mean.py: the streaming weighted mean of FedAvg."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator_service.strategy import AggregationError
from aggregator_service.strategy.mean import WeightedMean

Weights = dict[str, np.ndarray]


def _frozen(array: np.ndarray) -> np.ndarray:
    """Return a read-only view, as np.frombuffer gives for decoded updates."""
    view = array.view()
    view.flags.writeable = False
    return view


def _run(global_weights: Weights, updates: list[tuple[Weights, int]]) -> Weights:
    strategy = WeightedMean()
    strategy.begin_round(1, global_weights)
    for weights, num_examples in updates:
        strategy.accumulate(weights, num_examples)
    return strategy.finalize()


def test_two_clients_weighted_by_num_examples() -> None:
    global_weights = {"w": np.zeros(2, np.float32)}
    updates = [
        ({"w": _frozen(np.array([1.0, 2.0], np.float32))}, 1),
        ({"w": _frozen(np.array([3.0, 6.0], np.float32))}, 3),
    ]
    result = _run(global_weights, updates)
    # (1*[1, 2] + 3*[3, 6]) / 4 = [10, 20] / 4
    np.testing.assert_array_equal(result["w"], np.array([2.5, 5.0], np.float32))


def test_counts_and_protocol() -> None:
    strategy = WeightedMean()
    strategy.begin_round(3, {"w": np.zeros(1, np.float32)})
    strategy.accumulate({"w": np.ones(1, np.float32)}, 5)
    strategy.accumulate({"w": np.ones(1, np.float32)}, 7)
    assert strategy.num_updates == 2
    assert strategy.total_examples == 12


def test_integer_tensor_is_elementwise_max() -> None:
    global_weights: Weights = {
        "bn.running_mean": np.zeros(2, np.float32),
        "bn.num_batches_tracked": np.array(0, np.int64),
        "counts": np.zeros(3, np.int64),
    }
    updates: list[tuple[Weights, int]] = [
        (
            {
                "bn.running_mean": np.array([1.0, 1.0], np.float32),
                "bn.num_batches_tracked": np.array(40, np.int64),
                "counts": np.array([5, 1, 9], np.int64),
            },
            10,
        ),
        (
            {
                "bn.running_mean": np.array([3.0, 5.0], np.float32),
                "bn.num_batches_tracked": np.array(75, np.int64),
                "counts": np.array([2, 8, 9], np.int64),
            },
            30,
        ),
    ]
    result = _run(global_weights, updates)
    assert result["bn.num_batches_tracked"].dtype == np.int64
    assert result["bn.num_batches_tracked"].shape == ()
    assert int(result["bn.num_batches_tracked"]) == 75
    np.testing.assert_array_equal(result["counts"], np.array([5, 8, 9], np.int64))
    # (10*1 + 30*3) / 40 = 2.5 ; (10*1 + 30*5) / 40 = 4.0
    np.testing.assert_array_equal(result["bn.running_mean"], np.array([2.5, 4.0], np.float32))


def test_bool_tensor_is_logical_or() -> None:
    global_weights = {"mask": np.zeros(3, bool)}
    updates = [
        ({"mask": np.array([True, False, False])}, 1),
        ({"mask": np.array([False, False, True])}, 1),
    ]
    result = _run(global_weights, updates)
    assert result["mask"].dtype == np.bool_
    np.testing.assert_array_equal(result["mask"], [True, False, True])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_of_global_model_is_kept(dtype: type) -> None:
    global_weights: Weights = {"w": np.zeros((2, 2), dtype), "b": np.zeros(2, dtype)}
    updates: list[tuple[Weights, int]] = [
        ({"w": np.full((2, 2), 1.0, dtype), "b": np.array([0.5, 1.0], dtype)}, 2),
        ({"w": np.full((2, 2), 4.0, dtype), "b": np.array([0.5, 4.0], dtype)}, 2),
    ]
    result = _run(global_weights, updates)
    assert list(result) == ["w", "b"]
    assert result["w"].dtype == dtype
    assert result["b"].dtype == dtype
    np.testing.assert_array_equal(result["w"], np.full((2, 2), 2.5, dtype))
    np.testing.assert_array_equal(result["b"], np.array([0.5, 2.5], dtype))


def test_float16_update_into_float32_model() -> None:
    global_weights: Weights = {"w": np.zeros(1, np.float32)}
    updates: list[tuple[Weights, int]] = [
        ({"w": np.array([0.5], np.float16)}, 1),
        ({"w": np.array([1.5], np.float32)}, 1),
    ]
    result = _run(global_weights, updates)
    assert result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["w"], np.array([1.0], np.float32))


def test_products_are_not_rounded_to_float32() -> None:
    # 0.1f is 0.100000001490116...; 0.1f * 3 rounded to float32 is 0.30000001192...,
    # while in float64 it is 0.30000000447...; the float64 model must see the latter.
    value = np.float32(0.1)
    global_weights = {"w": np.zeros(1, np.float64)}
    result = _run(global_weights, [({"w": np.array([value], np.float32)}, 3)])
    assert result["w"][0] == float(value)  # 3 * x / 3 is exact in float64


def test_result_order_follows_the_global_model() -> None:
    global_weights = {"b": np.zeros(1, np.float32), "a": np.zeros(1, np.float32)}
    update = {"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)}
    assert list(_run(global_weights, [(update, 1)])) == ["b", "a"]


def test_single_client_returns_its_weights_exactly() -> None:
    rng = np.random.default_rng(0)
    weights: Weights = {
        "w": rng.standard_normal((7, 5)).astype(np.float32),
        "h": rng.standard_normal(9).astype(np.float16),
        "n": np.array(13, np.int64),
    }
    global_weights = {name: np.zeros_like(a) for name, a in weights.items()}
    frozen = {name: _frozen(a) for name, a in weights.items()}
    result = _run(global_weights, [(frozen, 123_457)])
    for name, array in weights.items():
        assert result[name].dtype == array.dtype
        np.testing.assert_array_equal(result[name], array)


def test_inputs_are_not_written() -> None:
    update: Weights = {"w": np.array([1.0, 2.0], np.float32), "n": np.array([3], np.int64)}
    copies = {name: a.copy() for name, a in update.items()}
    strategy = WeightedMean()
    strategy.begin_round(1, {"w": np.zeros(2, np.float32), "n": np.zeros(1, np.int64)})
    strategy.accumulate(update, 4)
    strategy.accumulate({"w": np.zeros(2, np.float32), "n": np.array([9], np.int64)}, 4)
    strategy.finalize()
    for name, array in update.items():
        np.testing.assert_array_equal(array, copies[name])


@pytest.mark.parametrize("num_examples", [0, -3, 2.5, True])
def test_bad_num_examples_raise(num_examples: object) -> None:
    strategy = WeightedMean()
    strategy.begin_round(1, {"w": np.zeros(1, np.float32)})
    with pytest.raises(AggregationError, match="num_examples"):
        strategy.accumulate({"w": np.ones(1, np.float32)}, num_examples)  # type: ignore[arg-type]


def test_finalize_without_updates_raises() -> None:
    strategy = WeightedMean()
    strategy.begin_round(4, {"w": np.zeros(1, np.float32)})
    with pytest.raises(AggregationError, match="round 4: no update"):
        strategy.finalize()


def test_out_of_order_calls_raise() -> None:
    strategy = WeightedMean()
    with pytest.raises(AggregationError, match="begin_round"):
        strategy.accumulate({"w": np.ones(1, np.float32)}, 1)
    strategy.begin_round(2, {"w": np.zeros(1, np.float32)})
    strategy.accumulate({"w": np.ones(1, np.float32)}, 1)
    strategy.finalize()
    with pytest.raises(AggregationError, match="round 2 is already finalized"):
        strategy.accumulate({"w": np.ones(1, np.float32)}, 1)
    with pytest.raises(AggregationError, match="already finalized"):
        strategy.finalize()


def test_begin_round_resets_state() -> None:
    strategy = WeightedMean()
    strategy.begin_round(1, {"w": np.zeros(1, np.float32), "n": np.zeros((), np.int64)})
    strategy.accumulate({"w": np.array([10.0], np.float32), "n": np.array(50, np.int64)}, 5)
    strategy.begin_round(2, {"w": np.zeros(1, np.float32), "n": np.zeros((), np.int64)})
    assert (strategy.num_updates, strategy.total_examples) == (0, 0)
    strategy.accumulate({"w": np.array([1.0], np.float32), "n": np.array(3, np.int64)}, 1)
    result = strategy.finalize()
    np.testing.assert_array_equal(result["w"], [1.0])
    assert int(result["n"]) == 3


_vectors = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=3, max_size=3
)


@settings(max_examples=50, deadline=None)
@given(
    updates=st.lists(st.tuples(_vectors, st.integers(1, 10_000)), min_size=1, max_size=8),
    data=st.data(),
)
def test_accumulation_order_does_not_matter(
    updates: list[tuple[list[float], int]], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(updates))))
    global_weights = {"w": np.zeros(3, np.float64)}
    as_arrays = [({"w": np.array(v, np.float64)}, n) for v, n in updates]
    forward = _run(global_weights, as_arrays)["w"]
    permuted = _run(global_weights, [as_arrays[i] for i in order])["w"]
    total = sum(n for _, n in updates)
    expected = [sum(v[j] * n for v, n in updates) / total for j in range(3)]
    scale = max(abs(x) for v, _ in updates for x in v) + 1.0
    np.testing.assert_allclose(permuted, forward, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(forward, expected, rtol=1e-12, atol=1e-12 * scale)


def test_concurrent_accumulate_matches_weighted_mean() -> None:
    rng = np.random.default_rng(7)
    shapes = {"conv.weight": (8, 3, 3, 3), "fc.bias": (10,)}
    global_weights = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    global_weights["bn.num_batches_tracked"] = np.array(0, np.int64)
    updates = [
        (
            {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
            | {"bn.num_batches_tracked": np.array(int(rng.integers(0, 1000)), np.int64)},
            int(rng.integers(1, 500)),
        )
        for _ in range(40)
    ]
    strategy = WeightedMean()
    strategy.begin_round(1, global_weights)
    barrier = threading.Barrier(10)

    def worker(share: list[tuple[dict[str, np.ndarray], int]]) -> None:
        barrier.wait()
        for weights, num_examples in share:
            strategy.accumulate(weights, num_examples)

    threads = [threading.Thread(target=worker, args=(updates[i::10],)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = strategy.finalize()
    assert strategy.num_updates == 40
    total = sum(n for _, n in updates)
    assert strategy.total_examples == total
    for name in shapes:
        stacked = np.stack([w[name].astype(np.float64) for w, _ in updates])
        expected = np.average(stacked, axis=0, weights=[n for _, n in updates])
        np.testing.assert_allclose(result[name], expected.astype(np.float32), rtol=1e-6)
    assert int(result["bn.num_batches_tracked"]) == max(
        int(w["bn.num_batches_tracked"]) for w, _ in updates
    )


def test_memory_stays_bounded_by_model_size() -> None:
    shapes = {"a": (500, 200), "b": (200, 100), "c": (100,)}
    num_params = sum(int(np.prod(s)) for s in shapes.values())
    global_weights = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    rng = np.random.default_rng(1)
    pool = [
        {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
        for _ in range(3)
    ]
    strategy = WeightedMean()
    tracemalloc.start()
    try:
        strategy.begin_round(1, global_weights)
        strategy.accumulate(pool[0], 10)
        _, after_first = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(100):
            strategy.accumulate(pool[i % 3], 10 + i)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Float64 sums (8 bytes per parameter, so tracemalloc does see numpy's buffers) plus a
    # scratch buffer no larger than the model.
    assert 8 * num_params <= after_first < 16 * num_params + 64_000
    # A hundred more updates add essentially nothing: no per-update copies are kept.
    assert peak - after_first < num_params // 10
    assert current - after_first < 10_000


def test_finalize_frees_each_sum_before_the_next_tensor_is_cast() -> None:
    shapes = dict.fromkeys(("a", "b", "c"), (100_000,))
    global_weights = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    update = {name: np.ones(shape, np.float32) for name, shape in shapes.items()}
    strategy = WeightedMean()
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        strategy.begin_round(1, global_weights)
        strategy.accumulate(update, 3)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = strategy.finalize()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(np.array_equal(result[name], np.ones(100_000, np.float32)) for name in shapes)
    # One tensor's float32 result (400 kB) beside the sums, not all three (1.2 MB); once
    # done, the float64 sums (2.4 MB) are gone and only the results (1.2 MB) remain.
    assert peak - before < 500_000
    assert after - before < -1_000_000


def test_tensors_larger_than_one_block_are_folded_whole() -> None:
    from aggregator_service.strategy.mean import _BLOCK

    size = 3 * _BLOCK + 5  # three full blocks and a remainder
    base = {"w": np.zeros((size,), np.float32)}
    first = {"w": np.arange(size, dtype=np.float32)}
    second = {"w": np.full((size,), 4.0, np.float32)}
    strategy = WeightedMean()
    strategy.begin_round(1, base)
    strategy.accumulate(first, 1)
    strategy.accumulate(second, 3)
    result = strategy.finalize()["w"]
    expected = (np.arange(size, dtype=np.float64) * 1 + 4.0 * 3) / 4
    np.testing.assert_allclose(result, expected.astype(np.float32), rtol=1e-7)


def test_tensors_folded_over_many_blocks_give_the_exact_weighted_mean() -> None:
    from aggregator_service.strategy.mean import _BLOCK

    shapes = {"w1": (3 * _BLOCK + 5,), "w2": (3, _BLOCK // 2 + 1), "b": (7,)}
    global_weights = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    rng = np.random.default_rng(7)
    updates = [
        {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
        for _ in range(3)
    ]
    counts = [5, 1, 14]
    strategy = WeightedMean()
    strategy.begin_round(1, global_weights)
    for update, n in zip(updates, counts, strict=True):
        strategy.accumulate(update, n)
    result = strategy.finalize()
    for name in shapes:
        expected = np.asarray(
            sum(u[name].astype(np.float64) * n for u, n in zip(updates, counts, strict=True))
        )
        np.testing.assert_array_equal(result[name], (expected / sum(counts)).astype(np.float32))


def test_the_next_round_starts_from_zero_and_leaves_the_last_result_alone() -> None:
    strategy = WeightedMean()
    for dtype in (np.float32, np.float64):
        model = {"w": np.zeros(2, dtype)}
        strategy.begin_round(1, model)
        strategy.accumulate({"w": np.array([2.0, 4.0], dtype)}, 1)
        first = strategy.finalize()
        strategy.begin_round(2, model)
        strategy.accumulate({"w": np.array([10.0, 20.0], dtype)}, 3)
        strategy.accumulate({"w": np.array([2.0, 4.0], dtype)}, 1)
        second = strategy.finalize()
        np.testing.assert_array_equal(first["w"], [2.0, 4.0])
        np.testing.assert_array_equal(second["w"], [8.0, 16.0])  # (30 + 2) / 4, (60 + 4) / 4
