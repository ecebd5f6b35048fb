"""One download of each global model for all the virtual clients of a process.

Virtual clients (`client_worker.virtual`) would each download and decode the same global
model every round: k clients, k copies of a body that is 45 MB for ResNet18. With a
`ModelFeed` the first client that asks holds the long poll, and the others wait for what
it brings. A client that finds a model in the feed that is new to it confirms it with a
GET carrying that model's ETag and wait=0: the server answers 304 without a body, with
this client's own `X-Tributary-Selected` header, and counts the client as seen. If the
server has moved on meanwhile, that GET brings the newer model, which goes into the feed.
A client's simulated network still spends the time of the download it did not make.
With download compression, each client names the feed's model as the one it holds, so
whichever client asks gets the steps since that model.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from client_worker.replies import NotModified, WeightsReply
from client_worker.transport import AggregatorClient

__all__ = ["ModelFeed"]

STOP_CHECK_S = 1.0  # how often a client waiting on the feed looks at its stop event


class ModelFeed:
    """The newest global model the clients of one process have received, shared."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._latest: WeightsReply | None = None
        self._polling = False  # a client holds the long poll for everyone

    def get_weights(
        self,
        client: AggregatorClient,
        min_round: int,
        etag: str | None,
        wait: float,
        stop: threading.Event,
    ) -> WeightsReply | None:
        """Like `client.get_weights`, with one download per model for the whole feed."""
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                latest = self._latest
                if latest is not None and _new_to(latest, min_round, etag):
                    break
                if not self._polling:
                    self._polling = True
                    return self._lead(client, min_round, etag, wait)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or stop.is_set():
                    latest = None  # nothing new here: ask the server (it also sees us)
                    break
                self._changed.wait(min(remaining, STOP_CHECK_S))
        client.hold(self._latest)  # the base of steps (download compression), for everyone
        if latest is None:
            return self._receive(client.poll_weights(min_round, etag, 0.0))
        return self._confirm(client, latest, min_round)

    def _lead(
        self, client: AggregatorClient, min_round: int, etag: str | None, wait: float
    ) -> WeightsReply | None:
        """Hold the long poll for every client of the feed (called with the lock held)."""
        client.hold(self._latest)
        self._changed.release()
        reply = None
        try:
            reply = client.get_weights(min_round, etag, wait)
        finally:
            self._changed.acquire()
            self._polling = False
            if reply is not None:
                self._offer(reply)
            self._changed.notify_all()
        return reply

    def _confirm(
        self, client: AggregatorClient, latest: WeightsReply, min_round: int
    ) -> WeightsReply | None:
        """Check that `latest` is still the server's model and learn this client's role in it."""
        answer = client.poll_weights(min_round, latest.etag, 0.0)
        if isinstance(answer, WeightsReply):
            return self._receive(answer)
        client.simulate_download(latest.nbytes)
        selected = answer.is_selected
        if selected is None:
            selected = client.client_id in latest.selected
        return dataclasses.replace(latest, is_selected=selected)

    def _receive(self, answer: WeightsReply | NotModified) -> WeightsReply | None:
        if isinstance(answer, NotModified):
            return None
        with self._changed:
            self._offer(answer)
            self._changed.notify_all()
        return answer

    def _offer(self, reply: WeightsReply) -> None:
        """Keep `reply` if it is at least as new as the feed's model (lock held)."""
        latest = self._latest
        if latest is None or reply.server_round >= latest.server_round:
            self._latest = reply


def _new_to(reply: WeightsReply, min_round: int, etag: str | None) -> bool:
    """Tell whether the server would answer a poll (min_round, etag) with `reply`."""
    return reply.etag != etag and (reply.server_round >= min_round or reply.phase == "finished")
