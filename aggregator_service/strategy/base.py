"""What a strategy is: a pure function of the current model and a round's updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from shared.errors import TributaryError

__all__ = ["AggregationError", "ClientUpdate", "Strategy"]


class AggregationError(TributaryError):
    """A strategy used out of order (no round begun, no update) or given a bad num_examples."""


@dataclass(frozen=True)
class ClientUpdate:
    """One client's accepted update; `weights` are read-only and already checked."""

    client_id: str
    num_examples: int
    weights: Mapping[str, np.ndarray]


class Strategy(Protocol):
    """Turns the global model and one round's updates into the next global model."""

    name: ClassVar[str]

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return the next global model; `updates` come in client-id order, at least one.

        `updates` is an iterator over memory-mapped journal files: a rule that folds (the
        mean) reads each update once and drops it; one that needs them all (the median)
        may keep them, as maps, not copies.
        """
        ...

    def state(self) -> dict[str, np.ndarray]:
        """Return the state carried across rounds (saved in every checkpoint)."""
        ...

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the state `state()` returned, after a restart."""
        ...
