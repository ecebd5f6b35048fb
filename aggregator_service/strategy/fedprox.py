"""FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127): FedAvg with a proximal client.

The change is on the clients: each adds (mu/2) * ||w - w_global||^2 to its local objective
(client_worker/algorithms/fedprox.py), with `mu` from the round config. The server rule is
FedAvg's weighted mean, unchanged.
"""

from __future__ import annotations

from typing import ClassVar

from aggregator_service.strategy.fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """The weighted mean; `mu` reaches the clients through the round config."""

    name: ClassVar[str] = "fedprox"

    def __init__(self, *, mu: float = 0.01) -> None:
        self.mu = mu  # the clients' proximal weight; the server rule does not use it
