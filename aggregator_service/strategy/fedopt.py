"""FedAdagrad, FedAdam, FedYogi (Reddi et al. 2021, https://arxiv.org/abs/2003.00295).

Adaptive Federated Optimization, Algorithm 2: the weighted mean of the round is the
aggregate; the pseudo-gradient delta = aggregate - current drives a server-side Adagrad,
Adam or Yogi step (`aggregate.adaptive_step`), which differ only in the second moment v.
As in the paper there is no bias correction, m starts at 0 and v at tau**2 (the least
v_{-1} it allows; Flower starts v at 0 and corrects FedAdam's bias). Both moments are kept
in float64 and saved in every checkpoint, so a restart continues bit for bit. Integer and
bool tensors take the mean rule's maximum unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np

from aggregator_service.strategy.aggregate import (
    adagrad_moment,
    adam_moment,
    adaptive_step,
    yogi_moment,
)
from aggregator_service.strategy.base import BaseStrategy, ClientUpdate
from aggregator_service.strategy.fedavg import fold_mean
from aggregator_service.strategy.mean import is_floating

__all__ = ["FedAdagrad", "FedAdam", "FedOpt", "FedYogi"]


class FedOpt(BaseStrategy):
    """Weighted mean, then an adaptive server step; subclasses give the second moment."""

    name: ClassVar[str]

    def __init__(self, *, eta: float = 1e-2, beta_1: float = 0.9, tau: float = 1e-3) -> None:
        self.eta = eta
        self.beta_1 = beta_1
        self.tau = tau
        self._moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # tensor -> (m, v)

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Return the next v from the last v and the squared pseudo-gradient."""
        raise NotImplementedError

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return current + eta * m / (sqrt(v) + tau), the moments updated with this round."""
        mean = fold_mean(server_round, current, updates)
        result: dict[str, np.ndarray] = {}
        moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, weights in current.items():
            if not is_floating(weights.dtype):
                result[name] = mean[name]
                continue
            stepped, m, v = adaptive_step(
                weights,
                mean[name],
                self._moments.get(name),
                self.second_moment,
                eta=self.eta,
                beta_1=self.beta_1,
                tau=self.tau,
            )
            moments[name] = m, v
            result[name] = stepped.astype(weights.dtype)
        self._moments = moments
        return result

    def state(self) -> dict[str, np.ndarray]:
        """Return m and v of every floating tensor (empty before the first round)."""
        state: dict[str, np.ndarray] = {}
        for name, (m, v) in self._moments.items():
            state[f"m/{name}"], state[f"v/{name}"] = m, v
        return state

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore m and v."""
        names = [key.removeprefix("m/") for key in state if key.startswith("m/")]
        self._moments = {
            name: (_float64(state[f"m/{name}"]), _float64(state[f"v/{name}"])) for name in names
        }


def _float64(array: np.ndarray) -> np.ndarray:
    return np.array(array, np.float64)


class FedAdagrad(FedOpt):
    """FedOpt with Adagrad's v: the sum of all squared pseudo-gradients."""

    name: ClassVar[str] = "fedadagrad"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Return v + delta**2."""
        return adagrad_moment(v, delta_sq)


class FedAdam(FedOpt):
    """FedOpt with Adam's v: an exponential moving average of squared pseudo-gradients."""

    name: ClassVar[str] = "fedadam"

    def __init__(
        self,
        *,
        eta: float = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, tau=tau)
        self.beta_2 = beta_2

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Return beta_2 * v + (1 - beta_2) * delta**2."""
        return adam_moment(v, delta_sq, self.beta_2)


class FedYogi(FedAdam):
    """FedOpt with Yogi's v: moves toward delta**2 by a fixed share of delta**2."""

    name: ClassVar[str] = "fedyogi"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """Return v - (1 - beta_2) * delta**2 * sign(v - delta**2)."""
        return yogi_moment(v, delta_sq, self.beta_2)
