"""Aggregation rules as pure functions over numpy arrays, each checkable against its paper.

The strategies (fedavg.py, fedavgm.py, fedmedian.py) apply them tensor by tensor. Floating
arithmetic is float64 throughout; the caller casts back to the model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["coordinate_median", "elementwise_max", "momentum_step", "weighted_mean"]


def weighted_mean(arrays: Sequence[np.ndarray], num_examples: Sequence[int]) -> np.ndarray:
    """Return sum(w_i * n_i) / sum(n_i) in float64 (McMahan et al. 2017, FedAvg)."""
    total = sum(num_examples)
    weighted = [np.asarray(a, np.float64) * n for a, n in zip(arrays, num_examples, strict=True)]
    return np.add.reduce(weighted) / total  # type: ignore[no-any-return]


def coordinate_median(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Return the coordinate-wise median in float64 (Yin et al. 2018); even counts: midpoint."""
    return np.median(np.stack([np.asarray(a, np.float64) for a in arrays]), axis=0)


def elementwise_max(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Return the element-wise maximum: the rule for integer and bool tensors (counters)."""
    return np.maximum.reduce([np.asarray(a) for a in arrays])  # type: ignore[no-any-return]


def momentum_step(
    current: np.ndarray,
    aggregate: np.ndarray,
    velocity: np.ndarray | None,
    *,
    server_lr: float,
    momentum: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (next weights, next velocity) of server momentum (Hsu et al. 2019, FedAvgM).

    The pseudo-gradient is delta = current - aggregate; v = momentum * v + delta (v = delta
    in the first round); next = current - server_lr * v. With server_lr 1 and momentum 0
    this is FedAvg.
    """
    delta = np.asarray(current, np.float64) - np.asarray(aggregate, np.float64)
    velocity = delta if velocity is None else momentum * velocity + delta
    return np.asarray(current, np.float64) - server_lr * velocity, velocity
