"""The client side of a federated algorithm: hooks around and inside local training.

A `ClientAlgorithm` is paired with a server strategy by the config name both use (the
round config's "strategy"). The worker calls, for each round it trains:

1. `before_training(model, context)`: the global weights are loaded into `model`; the
   context holds them, the round config and the groups the aggregator published.
2. at every step, `extra_loss(model)` (added to the loss before backward) and
   `transform_gradients(model)` (after backward, before the optimizer step).
3. `after_training(weights, result)`: returns the weights to send.
4. `groups_to_send()`: the tensor groups the update carries (protocol 2 when any).

Every hook of this base class does nothing: it is the plain FedAvg client. State that
must outlive the round (and the process) goes in `state_dict`/`load_state_dict`, which
the worker saves in its state dir once the update was accepted (`AlgorithmSession`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from client_worker.train import TrainResult

__all__ = ["ClientAlgorithm", "Groups", "RoundContext", "Weights"]

Weights = dict[str, np.ndarray]  # tensor name -> array, as on the wire
Groups = dict[str, Weights]  # group name -> tensors


@dataclass(frozen=True)
class RoundContext:
    """What a client algorithm knows of the round it trains."""

    server_round: int
    config: Mapping[str, Any]  # the round config of GET /get_weights
    global_weights: Mapping[str, np.ndarray]  # as received (read-only views)
    groups: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)

    @property
    def update_groups(self) -> tuple[str, ...]:
        """Return the group names an update must carry this round (config "update_groups")."""
        return tuple(str(name) for name in self.config.get("update_groups") or ())


class ClientAlgorithm:
    """The plain client (FedAvg): every hook is a no-op. Subclasses override some."""

    name: ClassVar[str] = "fedavg"

    def before_training(self, model: nn.Module, context: RoundContext) -> None:
        """Prepare the round; `model` holds the global weights and may be adjusted."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Return a term added to each step's loss (None: nothing)."""
        return None

    def transform_gradients(self, model: nn.Module) -> None:
        """Change the parameters' `.grad` in place before each optimizer step."""

    def after_step(self, model: nn.Module) -> None:
        """Change the parameters in place after each optimizer step."""

    def after_training(self, weights: Weights, result: TrainResult) -> Weights:
        """Return the weights to send, given the trained ones."""
        return weights

    def groups_to_send(self) -> Groups:
        """Return the tensor groups this round's update carries (empty: none)."""
        return {}

    def state_dict(self) -> Weights:
        """Return the state to keep across rounds and restarts (empty: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the state `state_dict` returned, read back from the state dir."""
