"""The federation's state: one object, one lock, one condition that wakes the round loop.

Every field below is read and written under `lock`. Heavy work (decoding, validating and
journalling an update; aggregating; encoding the model) happens outside it: an upload
holds its (client, round) slot with `claim`, which takes the slot under the lock, lets
the heavy work run, then records the update under the lock and notifies `changed` (or
gives the slot back if the work failed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator_service.federation.async_book import AsyncBook
from aggregator_service.federation.ledger import ClientLedger
from aggregator_service.federation.news import News
from aggregator_service.federation.publish import PublishedModel
from aggregator_service.federation.secagg_round import SecAggRound
from shared.config import ExperimentConfig
from shared.errors import Conflict, InvalidUpdate, Refused, TributaryError, Unavailable
from shared.schemas import Phase, ReceiveReply, RegisterReply, UpdateHeader
from shared.wire import TensorSpec

# How long an async update waits for the version being made before a 503 (seconds).
BUFFER_WAIT_S = 30.0

__all__ = ["BUFFER_WAIT_S", "Claim", "ClientInfo", "FederationState", "RoundState", "UpdateRecord"]


@dataclass
class Claim:
    """An update's hold on its (client, round) slot; `reply` is set once it is recorded."""

    duplicate: bool
    reply: ReceiveReply | None
    server_round: int  # the round whose journal takes the update (async: the open buffer's)
    raw_nbytes: int | None = None  # the body as plain tensors would be (compressed updates)
    started: float = field(default_factory=time.monotonic)  # when the body began to arrive

    @property
    def answer(self) -> ReceiveReply:
        """The reply to send (after the claim's block, or at once for a duplicate)."""
        assert self.reply is not None, "the update is not recorded yet"
        return self.reply


@dataclass
class ClientInfo:
    """A registered client."""

    num_examples: int | None
    registered_at: float  # wall clock
    last_seen: float  # monotonic


@dataclass(frozen=True)
class UpdateRecord:
    """One accepted update of the current round (its weights live in the strategy's sums)."""

    client_id: str
    num_examples: int
    metrics: dict[str, float]
    nbytes: int
    raw_nbytes: int | None = None  # as plain float tensors (compression); None: nbytes
    update_round: int | None = None  # async: the round it trained for; None: this round
    received_at: float | None = None  # wall clock, when recorded (None: resumed from disk)
    upload_s: float | None = None  # from its body's first byte read to its being recorded


@dataclass
class RoundState:
    """The round being trained (or waited for)."""

    server_round: int
    phase: Phase
    attempt: int = 0
    selected: frozenset[str] = frozenset()
    drawn_from: int | None = None  # how many clients `selected` was drawn from (privacy)
    received: dict[str, UpdateRecord] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.monotonic)
    opened_at: float = field(default_factory=time.time)  # wall clock, for /history
    deadline: float = float("inf")
    bytes_out: int = 0
    raw_bytes_out: int = 0  # bytes_out as full float models (download compression)
    secagg: SecAggRound | None = None  # the stages of a secure-aggregation round

    def next_attempt(self, selected: frozenset[str], *, keep_updates: bool) -> RoundState:
        """Return this round tried again by `selected`: same round, start and byte counts."""
        return RoundState(
            self.server_round,
            "training",
            attempt=self.attempt + 1,
            selected=selected,
            drawn_from=self.drawn_from,
            received=self.received if keep_updates else {},
            in_flight=self.in_flight if keep_updates else set(),
            started_at=self.started_at,
            opened_at=self.opened_at,
            bytes_out=self.bytes_out,
            raw_bytes_out=self.raw_bytes_out,
        )


@dataclass
class Counters:
    """Totals for /metrics."""

    updates_accepted: int = 0
    updates_duplicate: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0


class FederationState:
    """Clients, the current round and the published model, guarded by one lock."""

    def __init__(
        self,
        *,
        config: ExperimentConfig,
        spec: dict[str, TensorSpec],
        group_specs: dict[str, dict[str, TensorSpec]],
        global_weights: dict[str, np.ndarray],
        round_state: RoundState,
        published: PublishedModel,
        client_timeout_s: float,
    ) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.config = config
        self.spec = spec  # what every update carries: the model less the clients' own tensors
        self.group_specs = group_specs  # the tensor groups every update carries (protocol 2)
        self.global_weights = global_weights
        self.round = round_state
        self.published = published
        self.clients: dict[str, ClientInfo] = {}
        self.history: list[dict[str, Any]] = []
        self.privacy: dict[str, Any] | None = None  # DP-FedAvg's accountant, for /status
        self.counters = Counters()
        self.ledger = ClientLedger()  # per-client tallies for GET /clients
        self.news = News()  # told of every change GET /clients shows
        self.client_timeout_s = client_timeout_s
        self.started_at = time.time()
        self.book: AsyncBook | None = None  # async mode's slots and accepted rounds
        if config.mode == "async":
            self.book = AsyncBook(
                config.asynchronous, seed=config.seed, timeout_s=config.round_timeout_s
            )

    # ------------------------------------------------------------------ clients

    def register(self, client_id: str, num_examples: int | None) -> tuple[RegisterReply, bool]:
        """Register (or refresh) a client; return the reply and whether it is new."""
        with self.changed:
            info = self.clients.get(client_id)
            is_new = info is None
            if info is None:
                info = ClientInfo(num_examples, time.time(), time.monotonic())
                self.clients[client_id] = info
            else:
                info.last_seen = time.monotonic()
                info.num_examples = num_examples or info.num_examples
            self.changed.notify_all()
            self.news.announce()
            reply = RegisterReply(
                client_id=client_id,
                registered=True,
                round=self.round.server_round,
                phase=self.round.phase,
                num_rounds=self.config.num_rounds,
            )
            return reply, is_new

    def touch(self, client_id: str, min_round: int = 0) -> None:
        """Note that a registered client was seen asking for `min_round` or later.

        In async mode a client asking past the round of its slot has given that slot up
        (it skipped or crashed): the slot is freed for another client.
        """
        with self.changed:
            info = self.clients.get(client_id)
            if info is not None:
                info.last_seen = time.monotonic()
            if self.book is not None and self.book.release(client_id, min_round):
                self.changed.notify_all()

    def active_clients(self, now: float) -> list[str]:
        """Return the clients seen within the timeout (call under the lock)."""
        return sorted(
            cid
            for cid, info in self.clients.items()
            if now - info.last_seen <= self.client_timeout_s
        )

    # ------------------------------------------------------------------ updates

    @contextmanager
    def claim(
        self, header: UpdateHeader, nbytes: int, *, arrived: float | None = None
    ) -> Iterator[Claim]:
        """Hold the (client, round) slot of an update for the block; raise if refused.

        A duplicate of an accepted update gets `claim.duplicate` and its reply at once. Else
        the block checks and stores the update: if it ends normally the update is recorded
        (and the round loop woken), if it raises the slot is given back. `arrived`
        (monotonic, default now) is when the update's body began to arrive.
        """
        try:
            duplicate, server_round = self._reserve(header)
        except TributaryError as exc:
            self.note_refusal(header.client_id, exc)
            raise
        if duplicate is not None:
            yield Claim(duplicate=True, reply=duplicate, server_round=server_round)
            return
        claim = Claim(duplicate=False, reply=None, server_round=server_round)
        if arrived is not None:
            claim.started = arrived
        try:
            yield claim
        except BaseException as exc:
            self._release(header.client_id)
            if isinstance(exc, TributaryError):
                self.note_refusal(header.client_id, exc)
            raise
        claim.reply = self._commit(header, nbytes, claim)

    def _reserve(self, header: UpdateHeader) -> tuple[ReceiveReply | None, int]:
        """Take the update's slot, or answer a duplicate; return that and its journal's round."""
        with self.lock:
            if header.client_id in self.clients:
                self.clients[header.client_id].last_seen = time.monotonic()
            if self.book is not None:
                self._await_room(header)
            current = self.round.server_round
            if self.book is not None:
                reserved = self._reserve_buffered(header)
            else:
                reserved = self._reserve_round(header)
            if reserved is None:  # the slot is taken: the client is uploading
                self.news.announce()
            return reserved, current

    def _await_room(self, header: UpdateHeader) -> None:
        """Wait (under the lock, up to a bound) for room in an async buffer.

        A buffer takes `buffer_size` updates: one that arrives while the buffer is full or
        its version is being made waits for the next buffer instead of being sent back.
        Duplicates and refusals do not wait.
        """
        deadline = time.monotonic() + BUFFER_WAIT_S
        assert self.book is not None
        while time.monotonic() < deadline and self.book.must_wait(
            header.client_id, header.round, self.round
        ):
            self.changed.wait(deadline - time.monotonic())

    def _reserve_round(self, header: UpdateHeader) -> ReceiveReply | None:
        """Take the (client, round) slot of a synchronous round (under the lock)."""
        client_id = header.client_id
        current = self.round
        if self.config.secagg.enabled:
            raise Conflict(
                "secagg_required",
                "this run uses secure aggregation: post the masked update to "
                "/secagg/masked (docs/protocol.md)",
                round=current.server_round,
            )
        if header.round != current.server_round:
            raise Conflict(
                "stale_round",
                f"update is for round {header.round}; the current round is {current.server_round}",
                round=current.server_round,
            )
        if client_id in current.received:
            self.counters.updates_duplicate += 1
            return self._reply(duplicate=True)
        if client_id in current.in_flight:
            raise Unavailable(
                "in_progress",
                "an update from this client is being processed",
                round=current.server_round,
            )
        if current.phase != "training":
            raise Conflict(
                "round_closed",
                f"round {current.server_round} is {current.phase}",
                round=current.server_round,
            )
        if client_id not in current.selected:
            raise Conflict(
                "not_selected",
                f"client {client_id!r} is not selected for round {current.server_round}",
                round=current.server_round,
            )
        current.in_flight.add(client_id)
        return None

    def _reserve_buffered(self, header: UpdateHeader) -> ReceiveReply | None:
        """Take a place in the open async buffer, or answer a duplicate (under the lock)."""
        assert self.book is not None
        if self.book.admit(header.client_id, header.round, self.round):
            self.counters.updates_duplicate += 1
            return self._reply(duplicate=True)
        return None

    def surely_refused(self, client_id: str, server_round: int) -> bool:
        """Whether an update of `client_id` for `server_round` can never be accepted now.

        True for a past round, a client already received (a duplicate), a round being
        aggregated or finished, and any plain update of a secure-aggregation run: refusals
        no later state lifts (early_refusal.py). Not for a client outside the selection: a
        retried round may invite it.
        """
        if self.config.secagg.enabled:
            return True
        with self.lock:
            current = self.round
            if self.book is not None:  # a past round is refused only once too stale
                try:
                    return self.book.check(
                        client_id, server_round, current.server_round, count=False
                    )
                except (Conflict, InvalidUpdate):
                    return True
            if server_round != current.server_round:
                return server_round < current.server_round
            return client_id in current.received or current.phase in ("aggregating", "finished")

    def _release(self, client_id: str) -> None:
        """Give back a reserved slot after the update failed."""
        with self.changed:
            self.round.in_flight.discard(client_id)
            self.changed.notify_all()
            self.news.announce()

    def _commit(self, header: UpdateHeader, nbytes: int, claim: Claim) -> ReceiveReply:
        """Record an accumulated update and wake the round loop."""
        upload_s = round(time.monotonic() - claim.started, 4)
        with self.changed:
            current = self.round
            current.in_flight.discard(header.client_id)
            metrics = dict(header.metrics)
            current.received[header.client_id] = UpdateRecord(
                header.client_id,
                header.num_examples,
                metrics,
                nbytes,
                claim.raw_nbytes,
                update_round=header.round if self.book is not None else None,
                received_at=time.time(),
                upload_s=upload_s,
            )
            if self.book is not None:
                self.book.accept(header.client_id, header.round)
            self.counters.updates_accepted += 1
            self.counters.bytes_in += nbytes
            self.ledger.note_update(header.client_id, nbytes, metrics)
            self.changed.notify_all()
            self.news.announce()
            return self._reply(duplicate=False)

    def count_rejection(self, code: str) -> None:
        """Count a rejected request by reason."""
        with self.lock:
            self.counters.rejected[code] = self.counters.rejected.get(code, 0) + 1

    def note_refusal(self, client_id: str, exc: TributaryError) -> None:
        """Keep why a registered client's request was refused, for GET /clients."""
        code = exc.code if isinstance(exc, Refused) else type(exc).__name__
        message = exc.detail if isinstance(exc, Refused) else str(exc)
        with self.lock:
            if client_id in self.clients:
                self.ledger.note_refusal(client_id, code, message, self.round.server_round)
                self.news.announce()

    def count_bytes_out(
        self, nbytes: int, raw_nbytes: int | None = None, *, client_id: str | None = None
    ) -> None:
        """Count bytes of model payload sent (`raw_nbytes`: as the full model; None: nbytes)."""
        with self.lock:
            self.counters.bytes_out += nbytes
            self.round.bytes_out += nbytes
            self.round.raw_bytes_out += nbytes if raw_nbytes is None else raw_nbytes
            known = client_id is not None and client_id in self.clients
            if known and self.ledger.note_fetch(str(client_id), nbytes, self.round.server_round):
                self.news.announce()

    def needed(self) -> int:
        """Return how many updates close the current round at the earliest (under the lock)."""
        if self.book is not None:
            return self.book.section.buffer
        if self.config.close_at_threshold:
            return min(self.config.min_fit_clients, len(self.round.selected))
        return len(self.round.selected)

    # ------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        """Return a JSON-ready view of the federation for GET /status."""
        with self.lock:
            now = time.monotonic()
            current = self.round
            remaining = current.deadline - now
            return (
                {
                    "round": current.server_round,
                    "num_rounds": self.config.num_rounds,
                    "phase": current.phase,
                    "attempt": current.attempt,
                    "registered_clients": len(self.clients),
                    "active_clients": len(self.active_clients(now)),
                    "selected": sorted(current.selected),
                    "received": len(current.received),
                    "received_from": sorted(current.received),
                    "in_progress": sorted(current.in_flight),
                    "needed": self.needed(),
                    "min_fit_clients": self.config.min_fit_clients,
                    "deadline_in_s": round(remaining, 3) if remaining != float("inf") else None,
                    "last_round": self.history[-1] if self.history else None,
                    "model": self.config.model,
                    "uptime_s": round(time.time() - self.started_at, 3),
                    "mode": self.config.mode,
                }
                | self._async_status()
                | self._privacy_status()
            )

    def _privacy_status(self) -> dict[str, Any]:
        """Return DP-FedAvg's part of /status (under the lock)."""
        return {"privacy": dict(self.privacy)} if self.privacy is not None else {}

    def _async_status(self) -> dict[str, Any]:
        """Return async mode's part of /status: the version served, who trains (under the lock)."""
        if self.book is None:
            return {}
        return {
            # the version served: round - 1 while round's buffer fills; the last one at the end
            "version": self.round.server_round - (self.round.phase != "finished"),
            "buffer_size": self.book.section.buffer,
            "training": {cid: slot.server_round for cid, slot in sorted(self.book.slots.items())},
            "stale_refused": self.book.stale_refused,
        }

    def _reply(self, *, duplicate: bool) -> ReceiveReply:
        return ReceiveReply(
            accepted=True,
            duplicate=duplicate,
            round=self.round.server_round,
            received=len(self.round.received),
            needed=self.needed(),
        )
