"""SCAFFOLD (Karimireddy et al. 2020, https://arxiv.org/abs/1910.06378), Algorithm 1: the server.

The server holds the model x and the control variate c, and publishes c with x every round
(group "server_control"). Each sampled client i of S sends its trained weights y_i and the
change of its own control variate, dc_i (group "control_delta"). Then (lines 16-17):

    x <- x + eta_g * (1/|S|) * sum_{i in S} (y_i - x)
    c <- c + (|S|/N) * (1/|S|) * sum_{i in S} dc_i

The means are unweighted, as in the paper (FedAvg weights by num_examples; SCAFFOLD does
not). N is the number of clients of the federation (`num_clients`, by default the
experiment's `num_partitions`), so that c stays the mean of all N clients' c_i.

c spans the floating tensors updates carry; it is kept in float64, saved in every
checkpoint (`state`) and published as float32, the precision the clients train in. Before
the first round c = 0, published as an empty group. Integer and bool tensors have no control
variate: they take the mean rule's element-wise maximum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np

from aggregator_service.strategy.base import AggregationError, BaseStrategy, ClientUpdate
from aggregator_service.strategy.mean import is_floating
from shared.errors import ConfigError
from shared.wire import TensorSpec

__all__ = ["CONTROL_DELTA", "SERVER_CONTROL", "Scaffold", "control_step", "server_step"]

SERVER_CONTROL = "server_control"  # published: c
CONTROL_DELTA = "control_delta"  # in every update: dc_i = c_i+ - c_i
_STATE = "control/"  # state keys of c


def server_step(x: np.ndarray, mean_delta: np.ndarray, server_lr: float) -> np.ndarray:
    """Return x + eta_g * mean(y_i - x) in float64 (Algorithm 1, line 17)."""
    return np.asarray(x, np.float64) + server_lr * mean_delta


def control_step(
    c: np.ndarray, mean_delta: np.ndarray, num_sampled: int, num_clients: int
) -> np.ndarray:
    """Return c + (|S|/N) * mean(dc_i) in float64 (Algorithm 1, line 17)."""
    return np.asarray(c, np.float64) + (num_sampled / num_clients) * mean_delta


class Scaffold(BaseStrategy):
    """Unweighted mean step on x (server_lr eta_g) and on the control variate c (N clients)."""

    name: ClassVar[str] = "scaffold"

    def __init__(self, *, server_lr: float = 1.0, num_clients: int | None = None) -> None:
        if num_clients is None or num_clients < 1:
            raise ConfigError(
                f"scaffold needs num_clients, the federation's number of clients N; "
                f"got {num_clients!r}"
            )
        self.server_lr = server_lr
        self.num_clients = num_clients
        self._control: dict[str, np.ndarray] = {}  # c (float64); empty before the first round

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return the next x and move c; each update is read once, in the order given."""
        floating = [name for name, x in current.items() if is_floating(x.dtype)]
        sum_y = {name: np.zeros(current[name].shape) for name in floating}
        sum_dc = {name: np.zeros(current[name].shape) for name in floating}
        maxima: dict[str, np.ndarray] = {}
        sampled = 0
        for update in updates:
            delta = update.groups[CONTROL_DELTA]
            for name in current:
                weights = update.weights[name]
                if name in sum_y:
                    sum_y[name] += weights
                    sum_dc[name] += delta[name]
                else:  # integer and bool tensors: the element-wise maximum
                    maxima[name] = np.maximum(maxima.get(name, weights), weights)
            sampled += 1
        if sampled == 0:
            raise AggregationError(f"round {server_round}: no update to aggregate")
        if sampled > self.num_clients:
            raise AggregationError(
                f"round {server_round}: {sampled} updates from a federation of "
                f"num_clients={self.num_clients}; set strategy.num_clients to its size"
            )
        result: dict[str, np.ndarray] = {}
        for name, x in current.items():
            if name in sum_y:
                mean_delta = sum_y[name] / sampled - np.asarray(x, np.float64)  # mean(y_i - x)
                result[name] = server_step(x, mean_delta, self.server_lr).astype(x.dtype)
            else:
                result[name] = np.asarray(maxima[name], x.dtype)
        self._control = {
            name: control_step(
                self._control.get(name, np.zeros(current[name].shape)),
                sum_dc[name] / sampled,
                sampled,
                self.num_clients,
            )
            for name in floating
        }
        return result

    def update_groups(self, model: Mapping[str, TensorSpec]) -> dict[str, dict[str, TensorSpec]]:
        """Every update carries dc_i over the floating tensors, in their dtypes."""
        floating = {n: s for n, s in model.items() if is_floating(np.dtype(s.dtype))}
        return {CONTROL_DELTA: floating}

    def published_groups(self) -> dict[str, dict[str, np.ndarray]]:
        """Publish c as float32 (empty before the first round: c = 0)."""
        return {SERVER_CONTROL: {n: c.astype(np.float32) for n, c in self._control.items()}}

    def state(self) -> dict[str, np.ndarray]:
        """Return c, by tensor name (empty before the first round)."""
        return {_STATE + name: c for name, c in self._control.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore c."""
        self._control = {
            key.removeprefix(_STATE): np.array(value, np.float64)
            for key, value in state.items()
            if key.startswith(_STATE)
        }
