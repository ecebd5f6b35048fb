"""Personalization: a client keeps part of the model for itself (FedBN, FedPer).

`Personalized` wraps the round's client algorithm. Before training it puts the client's
own tensors (kept from its last accepted round) over the global ones the model was loaded
with; after training it keeps them again and sends the rest. Which tensors are the
client's follows from the round config's `local_layers` and `fedbn` (shared/exchange.py),
the same rule the aggregator applies, so the update carries exactly what it averages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from client_worker.algorithms.base import ClientAlgorithm, Groups, RoundContext, Weights
from client_worker.train import TrainResult
from shared.exchange import local_names

__all__ = ["Personalized"]

_LOCAL = "local/"  # state keys of the client's own tensors
_INNER = "inner/"  # ... and of the wrapped algorithm's state


class Personalized(ClientAlgorithm):
    """`inner`, plus the tensors named by `local_layers` and `fedbn` kept on this client."""

    name: ClassVar[str] = "personalized"

    def __init__(self, inner: ClientAlgorithm, *, local_layers: tuple[str, ...], fedbn: bool):
        self.inner = inner
        self.local_layers = local_layers
        self.fedbn = fedbn
        self.local: Weights = {}  # this client's own tensors, after its last accepted round
        self._names: list[str] = []

    def before_training(self, model: nn.Module, context: RoundContext) -> None:
        """Put this client's own tensors over the global ones, then prepare `inner`."""
        self._names = local_names(model, local_layers=self.local_layers, fedbn=self.fedbn)
        if self.local:
            own = {name: torch.from_numpy(np.array(self.local[name])) for name in self._names}
            model.load_state_dict(own, strict=False)
        self.inner.before_training(model, context)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """The wrapped algorithm's extra loss term."""
        return self.inner.extra_loss(model)

    def transform_gradients(self, model: nn.Module) -> None:
        """The wrapped algorithm's gradient transform."""
        self.inner.transform_gradients(model)

    def after_step(self, model: nn.Module) -> None:
        """The wrapped algorithm's change after each step."""
        self.inner.after_step(model)

    def after_training(self, weights: Weights, result: TrainResult) -> Weights:
        """Keep this client's own tensors; send the rest."""
        weights = self.inner.after_training(weights, result)
        self.local = {name: np.array(weights[name]) for name in self._names}
        return {name: array for name, array in weights.items() if name not in self.local}

    def groups_to_send(self) -> Groups:
        """The wrapped algorithm's groups."""
        return self.inner.groups_to_send()

    def state_dict(self) -> Weights:
        """This client's own tensors and the wrapped algorithm's state."""
        inner = {_INNER + key: value for key, value in self.inner.state_dict().items()}
        return {**{_LOCAL + key: value for key, value in self.local.items()}, **inner}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore both."""
        self.local = {k[len(_LOCAL) :]: v for k, v in state.items() if k.startswith(_LOCAL)}
        inner = {k[len(_INNER) :]: v for k, v in state.items() if k.startswith(_INNER)}
        if inner:
            self.inner.load_state_dict(inner)
