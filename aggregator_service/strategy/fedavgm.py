"""FedAvgM (Hsu et al. 2019, https://arxiv.org/abs/1909.06335): FedAvg plus server momentum.

The weighted mean of the round is the aggregate; the server then takes a momentum step on
the pseudo-gradient current - aggregate (`aggregate.momentum_step`). The velocity is kept
in float64 and saved in every checkpoint, so a restart continues bit for bit. Integer and
bool tensors take the mean rule's maximum unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np

from aggregator_service.strategy.aggregate import momentum_step
from aggregator_service.strategy.base import BaseStrategy, ClientUpdate
from aggregator_service.strategy.fedavg import fold_mean
from aggregator_service.strategy.mean import is_floating

__all__ = ["FedAvgM"]


class FedAvgM(BaseStrategy):
    """Weighted mean, then a server momentum step (server_lr eta, momentum beta)."""

    name: ClassVar[str] = "fedavgm"

    def __init__(self, *, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        self.server_lr = server_lr
        self.momentum = momentum
        self._velocity: dict[str, np.ndarray] = {}

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return current - server_lr * velocity, the velocity updated with this round."""
        mean = fold_mean(server_round, current, updates)
        result: dict[str, np.ndarray] = {}
        velocity: dict[str, np.ndarray] = {}
        for name, weights in current.items():
            if not is_floating(weights.dtype):
                result[name] = mean[name]
                continue
            stepped, velocity[name] = momentum_step(
                weights,
                mean[name],
                self._velocity.get(name),
                server_lr=self.server_lr,
                momentum=self.momentum,
            )
            result[name] = stepped.astype(weights.dtype)
        self._velocity = velocity
        return result

    def state(self) -> dict[str, np.ndarray]:
        """Return the velocity of every floating tensor (empty before the first round)."""
        return {f"velocity/{name}": v for name, v in self._velocity.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the velocity."""
        prefix = "velocity/"
        self._velocity = {
            key.removeprefix(prefix): np.array(value, np.float64)
            for key, value in state.items()
            if key.startswith(prefix)
        }
