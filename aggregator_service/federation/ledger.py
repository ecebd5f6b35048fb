"""Per-client tallies for the dashboard: bytes each way, last train loss, last refusal.

A `ClientLedger` is no lock of its own: FederationState mutates and reads it under its
lock. Only registered clients are tallied, so unknown client ids cannot grow it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["ClientLedger", "ClientTally", "Refusal"]

MAX_REFUSAL_CHARS = 300  # a refusal's message as kept for the page


@dataclass(frozen=True)
class Refusal:
    """Why the aggregator last refused one of a client's requests."""

    code: str
    message: str
    server_round: int
    at: float  # wall clock


@dataclass
class ClientTally:
    """What one client sent and fetched over the run, and how it last did."""

    bytes_in: int = 0
    bytes_out: int = 0
    fetched_round: int | None = None  # the last round whose model it downloaded
    train_loss: float | None = None  # of its last accepted update
    refusal: Refusal | None = None


class ClientLedger:
    """The tallies of every registered client (read and written under the state's lock)."""

    def __init__(self) -> None:
        self._tallies: dict[str, ClientTally] = {}

    def tally(self, client_id: str) -> ClientTally:
        """Return the tally of `client_id` (a new one on first use)."""
        return self._tallies.setdefault(client_id, ClientTally())

    def get(self, client_id: str) -> ClientTally:
        """Return the tally of `client_id`, or an empty one (not kept)."""
        return self._tallies.get(client_id) or ClientTally()

    def note_update(self, client_id: str, nbytes: int, metrics: dict[str, float]) -> None:
        """Count an accepted update's bytes and keep its train loss."""
        tally = self.tally(client_id)
        tally.bytes_in += nbytes
        loss = metrics.get("train_loss")
        if loss is not None:
            tally.train_loss = float(loss)

    def note_fetch(self, client_id: str, nbytes: int, server_round: int) -> bool:
        """Count a model download; return whether it is the client's first of this round."""
        tally = self.tally(client_id)
        tally.bytes_out += nbytes
        first = tally.fetched_round != server_round
        tally.fetched_round = server_round
        return first

    def note_refusal(self, client_id: str, code: str, message: str, server_round: int) -> None:
        """Keep the latest refusal of one of `client_id`'s requests."""
        text = message if len(message) <= MAX_REFUSAL_CHARS else message[:MAX_REFUSAL_CHARS] + "…"
        self.tally(client_id).refusal = Refusal(code, text, server_round, time.time())
