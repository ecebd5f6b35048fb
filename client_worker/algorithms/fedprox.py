"""FedProx's client: a proximal term that keeps the local model near the global one.

Li et al. 2020, https://arxiv.org/abs/1812.06127, eq. 2: the local objective adds
(mu/2) * ||w - w_global||^2, with w_global the weights received this round. `mu` comes
from the round config ("mu"); the server side is plain FedAvg.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from client_worker.algorithms.base import ClientAlgorithm, RoundContext, Weights
from client_worker.train import TrainResult

__all__ = ["FedProx"]


class FedProx(ClientAlgorithm):
    """Adds (mu/2) * ||w - w_global||^2 over the trainable parameters to each step's loss."""

    name = "fedprox"

    def __init__(self) -> None:
        self.mu = 0.0
        self._trainable: list[nn.Parameter] = []
        self._anchor: list[torch.Tensor] = []

    def before_training(self, model: nn.Module, context: RoundContext) -> None:
        """Read mu and keep a copy of the global weights as the anchor."""
        self.mu = float(context.config.get("mu", 0.0))
        if self.mu < 0:
            raise ValueError(f"mu must be >= 0; got {self.mu}")
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        self._anchor = [p.detach().clone() for p in self._trainable] if self.mu > 0 else []

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Return (mu/2) * ||w - w_global||^2 (None when mu is 0)."""
        if not self._anchor:
            return None
        pairs = zip(self._trainable, self._anchor, strict=True)
        distance = cast(torch.Tensor, sum(((p - w0) ** 2).sum() for p, w0 in pairs))
        return 0.5 * self.mu * distance

    def after_training(self, weights: Weights, result: TrainResult) -> Weights:
        """Drop the anchor (a model's worth of memory) and the parameters until next round."""
        self._trainable, self._anchor = [], []
        return weights
