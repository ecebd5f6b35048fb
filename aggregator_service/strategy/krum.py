"""Krum and multi-Krum (Blanchard et al. 2017, NeurIPS, https://arxiv.org/abs/1703.02757).

"Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent". With f =
`num_malicious_clients`, each update's score is the sum of its squared L2 distances (over
all floating tensors together) to its n - f - 2 nearest other updates; Krum keeps the
update of lowest score, multi-Krum the m = `num_clients_to_keep` lowest, and the next
model is their num_examples-weighted mean (as in Flower; the paper's multi-Krum averages
them unweighted). Ties go to the lower client id. The paper needs n > 2f + 2: a smaller
round is refused. Integer and bool tensors take the maximum over all the round's updates,
the rule every strategy shares.

The pairwise distances are summed block by block over the memory-mapped updates into one
N x N float64 matrix, so beyond the mappings they take N blocks of float64 at a time; the
mean of the selected updates is then folded as FedAvg folds (float64 sums, one per tensor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import numpy as np

from aggregator_service.strategy.aggregate import elementwise_max, krum_scores, squared_distances
from aggregator_service.strategy.base import (
    AggregationError,
    BaseStrategy,
    ClientUpdate,
    held_updates,
)
from aggregator_service.strategy.fedavg import fold_mean
from aggregator_service.strategy.fedmedian import BLOCK
from aggregator_service.strategy.mean import is_floating

__all__ = ["Krum", "pairwise_squared_distances"]


def pairwise_squared_distances(
    current: Mapping[str, np.ndarray], held: Sequence[ClientUpdate]
) -> np.ndarray:
    """Return the (N, N) squared L2 distances between updates over their floating tensors."""
    total = np.zeros((len(held), len(held)))
    for name, weights in current.items():
        if not is_floating(weights.dtype):
            continue
        arrays = [u.weights[name].reshape(-1) for u in held]
        for start in range(0, weights.size, BLOCK):
            block = np.stack([np.asarray(a[start : start + BLOCK], np.float64) for a in arrays])
            total += squared_distances(block)
    return total


class Krum(BaseStrategy):
    """The weighted mean of the m updates of lowest Krum score (m = 1: Krum's choice)."""

    name: ClassVar[str] = "krum"

    def __init__(self, *, num_malicious_clients: int = 0, num_clients_to_keep: int = 1) -> None:
        self.num_malicious_clients = num_malicious_clients
        self.num_clients_to_keep = num_clients_to_keep
        self.last_selected: list[str] = []  # client ids kept in the last round, best first

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return the weighted mean of the selected updates, in the model's dtypes."""
        held = held_updates(server_round, updates)
        n, f, m = len(held), self.num_malicious_clients, self.num_clients_to_keep
        if n <= 2 * f + 2:
            raise AggregationError(
                f"round {server_round}: krum with num_malicious_clients f = {f} needs more "
                f"than 2f + 2 = {2 * f + 2} updates, got n = {n}"
            )
        if m > n:
            raise AggregationError(
                f"round {server_round}: krum's num_clients_to_keep {m} exceeds the {n} updates"
            )
        scores = krum_scores(pairwise_squared_distances(current, held), f)
        selected = [held[i] for i in np.argsort(scores, kind="stable")[:m]]
        self.last_selected = [u.client_id for u in selected]
        mean = fold_mean(server_round, current, selected)
        return {
            name: (
                mean[name]
                if is_floating(weights.dtype)
                else np.asarray(elementwise_max([u.weights[name] for u in held]), weights.dtype)
            )
            for name, weights in current.items()
        }
