"""What a strategy is: a pure function of the current model and a round's updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from shared.errors import TributaryError
from shared.wire import TensorSpec

__all__ = [
    "AggregationError",
    "BaseStrategy",
    "ClientUpdate",
    "Groups",
    "Strategy",
    "SummedDeltas",
    "held_updates",
]

Groups = Mapping[str, Mapping[str, np.ndarray]]  # group name -> tensor name -> tensor


class AggregationError(TributaryError):
    """A strategy used out of order (no round begun, no update) or given a bad num_examples."""


@dataclass(frozen=True)
class ClientUpdate:
    """One client's accepted update; `weights` and `groups` are read-only and checked."""

    client_id: str
    num_examples: int
    weights: Mapping[str, np.ndarray]
    groups: Groups = field(default_factory=dict)  # protocol 2: e.g. control variates


@dataclass(frozen=True)
class SummedDeltas:
    """A round's updates known only by their sum, as secure aggregation yields them.

    `delta_sum` is sum_i w_i * (y_i - x) over the floating tensors, in float64, and
    `group_sums` the same sums of the update groups' tensors; w_i is what each client
    multiplied its update by (1 for uniform weighting) and `total_weight` is sum_i w_i.
    """

    num_clients: int
    total_weight: float
    delta_sum: Mapping[str, np.ndarray]
    group_sums: Groups = field(default_factory=dict)


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

    def aggregate_sum(
        self, server_round: int, current: Mapping[str, np.ndarray], summed: SummedDeltas
    ) -> dict[str, np.ndarray]:
        """Return the next global model from the sum of the updates alone (secure aggregation).

        A rule that needs each update (the median, Krum) raises AggregationError.
        """
        ...

    def check_update(self, current: Mapping[str, np.ndarray], update: ClientUpdate) -> None:
        """Raise InvalidUpdate if the rule cannot take `update` (checked once, at ingest)."""
        ...

    def client_config(self) -> dict[str, Any]:
        """Return the strategy's own entries of this round's config (sent to the clients)."""
        ...

    def state(self) -> dict[str, np.ndarray]:
        """Return the state carried across rounds (saved in every checkpoint)."""
        ...

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the state `state()` returned, after a restart."""
        ...

    def update_groups(self, model: Mapping[str, TensorSpec]) -> dict[str, dict[str, TensorSpec]]:
        """Return the tensor groups every update must carry, with their specs (protocol 2).

        `model` is the spec of the tensors updates carry: not the clients' own or frozen ones.
        """
        ...

    def published_groups(self) -> dict[str, dict[str, np.ndarray]]:
        """Return the tensor groups published with the global model (protocol 2)."""
        ...


class BaseStrategy:
    """No state across rounds and no tensor groups: what a plain rule inherits."""

    name: ClassVar[str]

    def aggregate_sum(
        self, server_round: int, current: Mapping[str, np.ndarray], summed: SummedDeltas
    ) -> dict[str, np.ndarray]:
        """Refuse: this rule needs each update, not their sum."""
        raise AggregationError(
            f"strategy {self.name!r} needs each client's update; under secure aggregation "
            "the aggregator has only their sum"
        )

    def check_update(self, current: Mapping[str, np.ndarray], update: ClientUpdate) -> None:
        """Take every update the wire codec accepted."""

    def client_config(self) -> dict[str, Any]:
        """Add nothing to the round config."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        """Keep nothing across rounds."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Nothing to restore."""

    def update_groups(self, model: Mapping[str, TensorSpec]) -> dict[str, dict[str, TensorSpec]]:
        """Updates carry the model's tensors alone (protocol 1)."""
        return {}

    def published_groups(self) -> dict[str, dict[str, np.ndarray]]:
        """The global model alone is published (protocol 1)."""
        return {}


def held_updates(server_round: int, updates: Iterable[ClientUpdate]) -> list[ClientUpdate]:
    """Return a round's updates as a list (maps, not copies); refuse an empty round."""
    held = list(updates)
    if not held:
        raise AggregationError(f"round {server_round}: no update to aggregate")
    return held
