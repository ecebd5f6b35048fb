"""Async mode's bookkeeping: who trains from which version, what each client last gave.

In async mode the round number of the wire is the version being made: round r buffers
updates into version r, and its published model is version r - 1. A client is told to
train by being in round r's `selected`; it holds that *slot* until its update arrives or
`round_timeout_s` passes, and at most `concurrency` clients hold one at a time. Its update
carries the round it was selected in (its base is version round - 1) and is taken into
whatever buffer is open when it arrives, with staleness = current round - its round.

Every field is read and written under the federation state's lock.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from shared.config import AsyncConfig
from shared.errors import Conflict, InvalidUpdate, Unavailable
from shared.schemas import Phase

__all__ = ["AsyncBook", "OpenBuffer", "Slot"]


class OpenBuffer(Protocol):
    """What the book needs of the round whose buffer is open (the state's RoundState)."""

    @property
    def server_round(self) -> int:
        """The round: the version its buffer makes."""

    @property
    def phase(self) -> Phase:
        """Its phase."""

    @property
    def received(self) -> Mapping[str, object]:
        """The updates taken."""

    @property
    def in_flight(self) -> set[str]:
        """The clients whose update is being received."""


@dataclass(frozen=True)
class Slot:
    """A client told to train from a version."""

    server_round: int  # the round it was selected in: it trains from version round - 1
    deadline: float  # monotonic: the slot is given to another client after this
    given_at: float  # wall clock


class AsyncBook:
    """The slots given, the last round each client's update was accepted for, and stale counts."""

    def __init__(self, section: AsyncConfig, *, seed: int, timeout_s: float) -> None:
        self.section = section
        self.seed = seed
        self.timeout_s = timeout_s
        self.slots: dict[str, Slot] = {}  # the clients training now
        self.given: dict[str, int] = {}  # client -> the last round it was selected in
        self.accepted: dict[str, int] = {}  # client -> the round of its last accepted update
        self.stale_refused = 0  # updates refused as too stale since the last version

    # ------------------------------------------------------------------ slots

    def capacity(self, registered: int) -> int:
        """Return how many clients may train at once."""
        limit = self.section.concurrency
        return registered if limit is None else min(limit, registered)

    def fill(
        self, server_round: int, candidates: Collection[str], busy: Collection[str], registered: int
    ) -> list[str]:
        """Give free slots of `server_round` to eligible clients; return them, sorted.

        Eligible: a candidate (active) holding no slot, not in `busy` (its update is in the
        open buffer) and never selected in this round. The draw is seeded by the round and
        how many slots it has given.
        """
        free = self.capacity(registered) - len(self.slots)
        eligible = sorted(
            cid
            for cid in candidates
            if cid not in self.slots and cid not in busy and self.given.get(cid, 0) < server_round
        )
        if free <= 0 or not eligible:
            return []
        given = sum(1 for slot in self.slots.values() if slot.server_round == server_round)
        rng = np.random.default_rng([self.seed, server_round, given])
        chosen = rng.choice(len(eligible), size=min(free, len(eligible)), replace=False)
        picked = sorted(eligible[int(i)] for i in chosen)
        now, wall = time.monotonic(), time.time()
        for client_id in picked:
            self.slots[client_id] = Slot(server_round, now + self.timeout_s, wall)
            self.given[client_id] = server_round
        return picked

    def expire(self, now: float) -> list[str]:
        """Take back the slots past their deadline; return their clients."""
        late = sorted(cid for cid, slot in self.slots.items() if slot.deadline <= now)
        for client_id in late:
            del self.slots[client_id]
        return late

    def next_deadline(self) -> float:
        """Return the earliest slot deadline (infinity without slots)."""
        return min((slot.deadline for slot in self.slots.values()), default=float("inf"))

    def selected_in(self, server_round: int) -> frozenset[str]:
        """Return the clients holding a slot of `server_round` (they train from its model)."""
        return frozenset(
            cid for cid, slot in self.slots.items() if slot.server_round == server_round
        )

    # ------------------------------------------------------------------ updates

    def check(
        self, client_id: str, update_round: int, current_round: int, *, count: bool = True
    ) -> bool:
        """Return True for a duplicate of an accepted update; raise if it is refused.

        A refusal as too stale is counted (`stale_refused`) unless `count` is False.
        """
        if update_round > current_round:
            raise InvalidUpdate(
                "future_version",
                f"update is for round {update_round}, but the aggregator is making version "
                f"{current_round} (round {current_round}): no client can have trained from "
                f"version {update_round - 1}",
            )
        last = self.accepted.get(client_id, 0)
        if update_round == last:
            return True
        if update_round < last:
            raise Conflict(
                "stale_round",
                f"an update of client {client_id!r} for round {last} was accepted after "
                f"round {update_round}'s",
                round=current_round,
            )
        staleness = current_round - update_round
        if staleness > self.section.max_staleness:
            self.stale_refused += count
            raise Conflict(
                "too_stale",
                f"update is for round {update_round}: {staleness} versions old, past "
                f"async.max_staleness ({self.section.max_staleness}); the current round "
                f"is {current_round}",
                round=current_round,
            )
        given = self.given.get(client_id)
        if given != update_round:
            told = f"was last selected in round {given}" if given else "was never selected"
            raise Conflict(
                "not_selected",
                f"client {client_id!r} {told}, not in round {update_round}",
                round=current_round,
            )
        return False

    def must_wait(self, client_id: str, update_round: int, buffer: OpenBuffer) -> bool:
        """Whether an update that would be taken must wait for the next buffer.

        A buffer takes `buffer_size` updates, counting those being received: one that
        arrives while it is full or its version is being made waits. Duplicates and
        refusals are answered at once.
        """
        if buffer.phase not in ("training", "aggregating"):
            return False
        try:
            if self.check(client_id, update_round, buffer.server_round, count=False):
                return False
        except (Conflict, InvalidUpdate):
            return False
        taken = len(buffer.received) + len(buffer.in_flight)
        return buffer.phase == "aggregating" or taken >= self.section.buffer

    def admit(self, client_id: str, update_round: int, buffer: OpenBuffer) -> bool:
        """Put the client's update in flight in `buffer`; True for a duplicate; raise if refused."""
        current = buffer.server_round
        if buffer.phase == "finished":
            raise Conflict("round_closed", "the run is finished", round=current)
        if self.check(client_id, update_round, current):
            return True
        if client_id in buffer.in_flight:
            raise Unavailable(
                "in_progress", "an update from this client is being processed", round=current
            )
        full = len(buffer.received) + len(buffer.in_flight) >= self.section.buffer
        if client_id in buffer.received or buffer.phase != "training" or full:
            raise Unavailable(
                "version_in_progress",
                f"version {current} is being made; send the update again when the next "
                "buffer opens",
                round=current,
            )
        buffer.in_flight.add(client_id)
        return False

    def accept(self, client_id: str, update_round: int) -> None:
        """Record an accepted update: its client's slot is free again."""
        self.accepted[client_id] = update_round
        self.slots.pop(client_id, None)

    def release(self, client_id: str, seen_round: int) -> bool:
        """Free the slot of a client that asks for a round past its slot's; tell if it had one."""
        slot = self.slots.get(client_id)
        if slot is None or slot.server_round >= seen_round:
            return False
        del self.slots[client_id]
        return True

    # ------------------------------------------------------------------ persistence

    def to_meta(self) -> dict[str, Any]:
        """Return what a restart needs: the rounds given and accepted per client."""
        return {
            "given": dict(sorted(self.given.items())),
            "accepted": dict(sorted(self.accepted.items())),
        }

    def load_meta(self, meta: Mapping[str, Any] | None) -> None:
        """Restore what `to_meta` saved; a slot not answered yet gets a fresh deadline."""
        if not meta:
            return
        self.given = {cid: int(r) for cid, r in meta["given"].items()}
        self.accepted = {cid: int(r) for cid, r in meta["accepted"].items()}
        now, wall = time.monotonic(), time.time()
        self.slots = {
            cid: Slot(r, now + self.timeout_s, wall)
            for cid, r in self.given.items()
            if self.accepted.get(cid, 0) < r
        }
