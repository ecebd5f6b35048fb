"""The worker's part in secure aggregation: one session per round attempt, around training.

Before training, `join` advertises the attempt's keys and exchanges the sealed shares;
after it, `deliver` posts the masked update and reveals the shares the sum needs. An
attempt that goes on without this client (it came late, its worker restarted, the
aggregator retried the round) is remembered as tried, so the worker waits for the next
attempt or round instead of knocking again. The stages are in docs/protocol.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from client_worker.errors import UpdateRejected
from client_worker.replies import WeightsReply
from client_worker.secagg_session import AttemptEnded, SecAggSession, options_of
from client_worker.transport import AggregatorClient
from shared.secagg.vector import group_values, update_vector
from shared.wire import spec_of

__all__ = ["SecAggPart", "TransportChannel", "update_delta"]

_log = logging.getLogger(__name__)


class TransportChannel:
    """A session's way to the aggregator: the worker's client, with its retries and errors."""

    def __init__(self, client: AggregatorClient) -> None:
        self.client = client

    def secagg_post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a JSON message to /secagg/<path>."""
        return self.client.call("POST", f"/secagg/{path}", json_body=body)

    def secagg_get(self, path: str, params: Mapping[str, str | int | float]) -> dict[str, Any]:
        """GET /secagg/<path>."""
        return self.client.call("GET", f"/secagg/{path}", params=params)

    def post_masked(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """POST the msgpack masked-vector message."""
        return self.client.post_message("/secagg/masked", message)


def update_delta(
    trained: Mapping[str, np.ndarray],
    start: Mapping[str, np.ndarray],
    groups: Mapping[str, Mapping[str, np.ndarray]],
) -> np.ndarray:
    """Return the float64 vector a client masks: y - x, then its update groups' values."""
    spec = spec_of({name: trained[name] for name in start if name in trained})
    return np.concatenate([update_vector(trained, start, spec), group_values(groups)])


class SecAggPart:
    """A client's secure-aggregation sessions, and the last round attempt it tried."""

    def __init__(
        self, client: AggregatorClient, client_id: str, *, wait_s: float, stop: threading.Event
    ) -> None:
        self.channel = TransportChannel(client)
        self.client_id = client_id
        self.wait_s = wait_s
        self.stop = stop
        self.tried: tuple[int, int] | None = None

    @staticmethod
    def applies(reply: WeightsReply) -> bool:
        """Whether the round runs under secure aggregation."""
        return "secagg" in reply.config

    def untried(self, reply: WeightsReply) -> bool:
        """Whether this client has not yet taken part in the reply's round attempt."""
        if not self.applies(reply):
            return True
        return (reply.server_round, options_of(reply.config)[1]) != self.tried

    def join(self, reply: WeightsReply) -> SecAggSession | None:
        """Advertise keys and exchange shares; None if the attempt goes on without this client."""
        session = SecAggSession(
            self.channel,
            self.client_id,
            reply.server_round,
            reply.config,
            wait_s=self.wait_s,
            stop=self.stop,
        )
        self.tried = (reply.server_round, session.attempt)
        try:
            session.prepare()
        except (AttemptEnded, UpdateRejected) as exc:
            self._log(session, "goes on without this client: %s", exc)
            return None
        return session

    def deliver(
        self,
        session: SecAggSession,
        delta: np.ndarray,
        num_examples: int,
        metrics: Mapping[str, float],
        seed: int,
    ) -> dict[str, Any] | None:
        """Post the masked update, then reveal shares; the masked post's answer, or None."""
        try:
            answer = session.submit(delta, num_examples, metrics, np.random.default_rng(seed))
        except (AttemptEnded, UpdateRejected) as exc:
            self._log(session, "refused the masked update: %s", exc)
            return None
        try:
            session.finish()
        except (AttemptEnded, UpdateRejected) as exc:
            self._log(session, "ended before this client revealed its shares: %s", exc)
        return answer

    def _log(self, session: SecAggSession, message: str, *args: object) -> None:
        _log.info(
            "client %s: round %d attempt %d " + message,
            self.client_id,
            session.server_round,
            session.attempt,
            *args,
        )
