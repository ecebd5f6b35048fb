"""Staleness weights and rebased updates, on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregator_service.strategy.asynchronous import rebase, staleness_weight


@pytest.mark.parametrize(
    ("staleness", "kind", "exponent", "expected"),
    [
        (0, "polynomial", 0.5, 1.0),
        (3, "polynomial", 0.5, 0.5),  # 1 / sqrt(4)
        (1, "polynomial", 1.0, 0.5),
        (7, "polynomial", 2.0, 1 / 64),
        (9, "constant", 0.5, 1.0),
        (4, "polynomial", 0.0, 1.0),
    ],
)
def test_staleness_weight(staleness: int, kind: str, exponent: float, expected: float) -> None:
    assert staleness_weight(staleness, kind, exponent) == pytest.approx(expected)  # type: ignore[arg-type]


def test_negative_staleness_is_refused() -> None:
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        staleness_weight(-1, "polynomial", 0.5)


def test_fedbuff_rebase_adds_the_weighted_step_from_the_base() -> None:
    current = {"w": np.array([10.0, 20.0], np.float32)}
    base = {"w": np.array([1.0, 2.0], np.float32)}
    trained = {"w": np.array([3.0, 1.0], np.float32)}  # step from base: (2, -1)
    rebased = rebase(current, trained, base, 0.5)
    np.testing.assert_array_equal(rebased["w"], np.array([11.0, 19.5], np.float32))
    assert rebased["w"].dtype == np.float32


def test_fedasync_rebase_mixes_with_the_current_model() -> None:
    current = {"w": np.array([4.0, -2.0], np.float64)}
    trained = {"w": np.array([8.0, 2.0], np.float64)}
    alpha = 0.6 * (1 / math.sqrt(2))  # alpha * s(1)
    rebased = rebase(current, trained, current, alpha)
    expected = (1 - alpha) * current["w"] + alpha * trained["w"]
    np.testing.assert_allclose(rebased["w"], expected, rtol=0, atol=1e-12)


def test_integer_tensors_pass_through_as_sent() -> None:
    current: dict[str, np.ndarray] = {"steps": np.array(5, np.int64), "w": np.zeros(2, np.float32)}
    trained: dict[str, np.ndarray] = {"steps": np.array(9, np.int64), "w": np.ones(2, np.float32)}
    rebased = rebase(current, trained, current, 0.25)
    assert rebased["steps"] == 9
    assert rebased["steps"].dtype == np.int64
    np.testing.assert_array_equal(rebased["w"], np.full(2, 0.25, np.float32))
