"""Asynchronous rules: staleness weights and how a stale update re-enters the current model.

FedBuff (Nguyen et al. 2022, Algorithm 1): each buffered update counts as its own step
Delta_i = y_i - x_{tau_i}, taken from the version tau_i it started from, weighted by
s(t - tau_i), and the buffer moves the model by eta_g times their mean. FedAsync (Xie et al.
2019, Algorithm 1): x_t = (1 - a) x_{t-1} + a y with a = alpha * s(t - tau).

Both are written here as a *rebased update* x + w (y - b) (b = x_tau for FedBuff, b = x for
FedAsync; w = eta_g s or alpha s), so that any rule of the strategy suite aggregates the
buffer: FedAvg's weighted mean of rebased updates is FedBuff's step (FedAsync's mix for a
buffer of one), and a server optimizer takes the same mean as its pseudo-gradient.
Integer tensors (counters such as BatchNorm's num_batches_tracked) are not steps: they are
passed on as the client sent them, for the strategy's integer rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

__all__ = ["rebase", "staleness_weight"]

StalenessKind = Literal["constant", "polynomial"]


def staleness_weight(staleness: int, kind: StalenessKind, exponent: float) -> float:
    """Return s(t): 1 (constant) or 1 / (1 + t)^exponent (polynomial)."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    return float((1.0 + staleness) ** -exponent)


def rebase(
    current: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    weight: float,
) -> dict[str, np.ndarray]:
    """Return current + weight * (trained - base), in float64, cast to each tensor's dtype."""
    rebased: dict[str, np.ndarray] = {}
    for name, now in current.items():
        sent = trained[name]
        if not np.issubdtype(now.dtype, np.floating):
            rebased[name] = np.array(sent, dtype=now.dtype)
            continue
        step = sent.astype(np.float64) - base[name].astype(np.float64)
        rebased[name] = (now.astype(np.float64) + weight * step).astype(now.dtype)
    return rebased
