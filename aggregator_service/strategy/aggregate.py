"""Aggregation rules as pure functions over numpy arrays, each checkable against its paper.

The strategies (fedavg.py, fedavgm.py, fedmedian.py, fedopt.py, fedtrimmedavg.py, krum.py)
apply them tensor by tensor or block by block. Floating arithmetic is float64 throughout; the
caller casts back to the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "SecondMoment",
    "adagrad_moment",
    "adam_moment",
    "adaptive_step",
    "coordinate_median",
    "elementwise_max",
    "krum_scores",
    "momentum_step",
    "squared_distances",
    "trimmed_mean",
    "weighted_mean",
    "yogi_moment",
]

SecondMoment = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (v, delta**2) -> next v


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


def adaptive_step(
    current: np.ndarray,
    aggregate: np.ndarray,
    moments: tuple[np.ndarray, np.ndarray] | None,
    second_moment: SecondMoment,
    *,
    eta: float,
    beta_1: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (next weights, m, v) of FedOpt (Reddi et al. 2021, Algorithm 2, no bias correction).

    delta = aggregate - current; m = beta_1 * m + (1 - beta_1) * delta; v = second_moment(v,
    delta**2); next = current + eta * m / (sqrt(v) + tau). `moments` None (the first round)
    starts from m = 0 and v = tau**2, the least v_{-1} the paper allows.
    """
    x = np.asarray(current, np.float64)
    delta = np.asarray(aggregate, np.float64) - x
    if moments is None:
        moments = np.zeros_like(delta), np.full_like(delta, tau * tau)
    m, v = moments
    m = beta_1 * m + (1 - beta_1) * delta
    v = second_moment(v, delta * delta)
    return x + eta * m / (np.sqrt(v) + tau), m, v


def adagrad_moment(v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
    """Return FedAdagrad's v + delta**2."""
    return v + delta_sq  # type: ignore[no-any-return]


def adam_moment(v: np.ndarray, delta_sq: np.ndarray, beta_2: float) -> np.ndarray:
    """Return FedAdam's beta_2 * v + (1 - beta_2) * delta**2."""
    return beta_2 * v + (1 - beta_2) * delta_sq


def yogi_moment(v: np.ndarray, delta_sq: np.ndarray, beta_2: float) -> np.ndarray:
    """Return FedYogi's v - (1 - beta_2) * delta**2 * sign(v - delta**2)."""
    return v - (1 - beta_2) * delta_sq * np.sign(v - delta_sq)  # type: ignore[no-any-return]


def trimmed_mean(arrays: Sequence[np.ndarray], beta: float) -> np.ndarray:
    """Return the coordinate-wise mean without the int(beta * n) lowest and highest values.

    Unweighted, in float64 (Yin et al. 2018); beta 0 is the plain mean. The caller checks
    that something is left: n - 2 * int(beta * n) >= 1.
    """
    cut = int(beta * len(arrays))
    ordered = np.sort(np.stack([np.asarray(a, np.float64) for a in arrays]), axis=0)
    return ordered[cut : len(arrays) - cut].mean(axis=0)  # type: ignore[no-any-return]


def squared_distances(block: np.ndarray) -> np.ndarray:
    """Return the (N, N) squared L2 distances between the N rows of a (N, B) float64 block."""
    n = block.shape[0]
    out = np.zeros((n, n))
    for i in range(n - 1):
        diff = block[i + 1 :] - block[i]  # (N - i - 1, B)
        out[i, i + 1 :] = out[i + 1 :, i] = np.einsum("ij,ij->i", diff, diff)
    return out


def krum_scores(sq_distances: np.ndarray, num_malicious: int) -> np.ndarray:
    """Return each update's Krum score (Blanchard et al. 2017).

    Score of update i: the sum of its squared distances to its n - f - 2 nearest other
    updates, f = `num_malicious`. The caller checks n > 2f + 2.
    """
    n = sq_distances.shape[0]
    nearest = n - num_malicious - 2
    others = [np.delete(sq_distances[i], i) for i in range(n)]
    return np.array([np.sort(row)[:nearest].sum() for row in others])
