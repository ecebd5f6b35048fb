"""Quantization: round-trip error within one level, sums dequantized exactly, capacity checked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.secagg.quantize import MODULUS, Quantizer

values = arrays(np.float64, st.integers(1, 64), elements=st.floats(-20, 20))


@settings(max_examples=80, deadline=None)
@given(values, st.sampled_from([1 << 8, 1 << 16, 1 << 22]), st.floats(0.5, 10), st.booleans())
def test_round_trip_error_is_at_most_one_step(
    x: np.ndarray, levels: int, clip: float, stochastic: bool
) -> None:
    q = Quantizer(clip, levels)
    rng = np.random.default_rng(0) if stochastic else None
    quantized = q.quantize(x, rng)
    assert quantized.dtype == np.uint32
    assert quantized.max() <= levels - 1
    back = q.dequantize_sum(quantized.astype(np.uint64), 1)
    step = 1.0 / q.scale
    bound = step if stochastic else step / 2
    np.testing.assert_array_less(np.abs(back - np.clip(x, -clip, clip)), bound + 1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(arrays(np.float64, 8, elements=st.floats(-20, 20)), min_size=1, max_size=20))
def test_a_ring_sum_dequantizes_to_the_sum_of_dequantized_values(xs: list[np.ndarray]) -> None:
    q = Quantizer()
    levels = [q.quantize(x, np.random.default_rng(i)) for i, x in enumerate(xs)]
    ring = np.zeros(8, np.uint32)
    for level in levels:
        np.add(ring, level, out=ring)  # wraps modulo 2^32
    each = sum(q.dequantize_sum(level, 1) for level in levels)
    np.testing.assert_allclose(q.dequantize_sum(ring, len(xs)), each, atol=1e-9)


def test_stochastic_rounding_is_unbiased() -> None:
    q = Quantizer(1.0, 3)  # levels -1, 0, 1
    x = np.full(200_000, 0.25)
    mean = q.dequantize_sum(q.quantize(x, np.random.default_rng(1)), 1).mean()
    assert abs(mean - 0.25) < 0.01


def test_capacity_is_checked() -> None:
    q = Quantizer(8.0, 1 << 22)
    assert q.max_summands() == (MODULUS - 1) // ((1 << 22) - 1) == 1024
    q.check_summands(1024)
    with pytest.raises(ValueError, match="at most 1024 clients"):
        q.check_summands(1025)


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="clipping_range"):
        Quantizer(0.0)
    with pytest.raises(ValueError, match="quantization_range"):
        Quantizer(1.0, 1)
