"""The round loop's async transitions: slots handed out, buffers closed, versions kept.

`RoundLoop` hands a training round of an async run to `AsyncSteps.step`, under the
state's condition. A round there is the buffer that makes the next version: it closes as
soon as `buffer_size` updates are in (and none is still being received), whatever round
each of them trained for. Between closes the step hands free slots to idle clients and
republishes the round so they see they are selected, and takes back slots whose client
stayed away past `round_timeout_s`.

At the close each update re-enters the current model as a rebased update
(strategy/asynchronous.py), from the version it trained from; the last `max_staleness`
+ 1 versions are kept for that, in memory and as checkpoints (a restart reloads them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import numpy as np

from aggregator_service.federation.deltas import RebuiltWeights
from aggregator_service.federation.ingest import decode_update
from aggregator_service.federation.state import FederationState, RoundState
from aggregator_service.store.run_store import RunStore, split_server_state
from aggregator_service.strategy import ClientUpdate
from aggregator_service.strategy.asynchronous import rebase, staleness_weight
from shared.config import AsyncConfig
from shared.wire import decode_weights, spec_of

__all__ = ["AsyncSteps", "Versions", "buffered_updates"]

log = logging.getLogger("aggregator_service.federation.rounds")

Install = Callable[[RoundState, Mapping[str, np.ndarray]], None]
Weights = Mapping[str, np.ndarray]


class Versions:
    """The global models an update may have trained from: version v is the model after round v."""

    def __init__(self, max_staleness: int) -> None:
        self.keep = max_staleness + 1
        self.models: dict[int, Weights] = {}

    def add(self, version: int, weights: Weights) -> None:
        """Keep `weights` as `version`; forget those no update may start from any more."""
        self.models[version] = weights
        for old in [v for v in self.models if v <= version - self.keep]:
            del self.models[old]

    def load(self, store: RunStore, latest: int, names: Mapping[str, object]) -> None:
        """Reload the kept versions up to `latest` from the store's checkpoints."""
        for version, tensors in store.checkpoints_since(latest - self.keep + 1).items():
            weights, _ = split_server_state(tensors)
            self.add(version, {name: weights[name] for name in names})


def buffered_updates(
    store: RunStore,
    server_round: int,
    current: Weights,
    versions: Versions,
    section: AsyncConfig,
) -> Iterator[ClientUpdate]:
    """Yield the buffer's journalled updates in client-id order, each rebased on `current`."""
    spec = spec_of(current)
    for client_id, num_examples, body in store.updates.pending(server_round):
        header, raw_weights = decode_update(body)
        base = versions.models.get(header.round - 1)
        if base is None:  # its checkpoint was lost; the update was acknowledged, so say so
            log.error(
                "round %d: the update of %s trained from version %d, which is no longer "
                "known; it is left out",
                server_round,
                client_id,
                header.round - 1,
            )
            continue
        trained: Weights = (
            RebuiltWeights(raw_weights, spec, base)
            if header.delta
            else decode_weights(raw_weights, allow_nonfinite=True)
        )
        s = staleness_weight(
            server_round - header.round, section.staleness, section.staleness_exponent
        )
        if section.algorithm == "fedbuff":
            rebased = rebase(current, trained, base, section.eta * s)
        else:
            rebased = rebase(current, trained, current, section.mixing * s)
        yield ClientUpdate(client_id, num_examples, rebased)


class AsyncSteps:
    """What the round loop does with an async run's open buffer (`install` publishes it)."""

    def __init__(self, state: FederationState, *, install: Install) -> None:
        assert state.book is not None, "AsyncSteps serves async runs only"
        self.state = state
        self.book = state.book
        self.install = install
        self.versions = Versions(state.config.asynchronous.max_staleness)

    def select(self, server_round: int, now: float) -> frozenset[str]:
        """Hand the free slots of a new round out (under the lock); return its selection."""
        self.book.fill(server_round, self.state.active_clients(now), (), len(self.state.clients))
        return self.book.selected_in(server_round)

    def step(
        self, current: RoundState, now: float, *, skip: bool
    ) -> Callable[[], None] | Literal["close"] | None:
        """Return the open buffer's next transition, "close", or None to wait (under the lock)."""
        state = self.state
        expired = self.book.expire(now)
        for client_id in expired:
            log.warning(
                "round %d: client %s trained past round_timeout_s; its slot goes to another",
                current.server_round,
                client_id,
            )
        if not current.in_flight and (
            len(current.received) >= self.book.section.buffer or (skip and current.received)
        ):
            return "close"
        busy = set(current.received) | current.in_flight
        self.book.fill(current.server_round, state.active_clients(now), busy, len(state.clients))
        selected = self.book.selected_in(current.server_round)
        if selected == current.selected:
            return None
        current.selected = selected
        weights = state.global_weights
        return lambda: self.install(current, weights)

    def wait_s(self, now: float) -> float:
        """Return how long the loop may sleep before a slot's deadline (under the lock)."""
        return max(self.book.next_deadline() - now, 0.0)
