"""Tests of the model feed: one download of each global model for a process's clients."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from client_worker.feed import ModelFeed
from client_worker.network import NetworkSimulator
from client_worker.replies import WeightsReply
from client_worker.transport import AggregatorClient
from shared.config import NetworkProfile
from shared.wire import encode_message

WEIGHTS = {"w": np.arange(1000, dtype=np.float32)}


class LongPollServer:
    """GET /get_weights with the aggregator's rules: hold until new, 304 for a current ETag."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.server_round, self.phase, self.selected = 0, "waiting", frozenset[str]()
        self.bodies = 0  # 200 answers with a model
        self.polls: list[tuple[str, float]] = []  # (client_id, wait) of every poll

    @property
    def etag(self) -> str:
        return f'"r{self.server_round}-{self.phase}"'

    def publish(self, server_round: int, selected: set[str], phase: str = "training") -> None:
        with self.changed:
            self.server_round, self.phase, self.selected = server_round, phase, frozenset(selected)
            self.changed.notify_all()

    def handler(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        client_id, wait = params["client_id"], float(params["wait"])
        min_round, seen = int(params["min_round"]), request.headers.get("If-None-Match")
        deadline = time.monotonic() + wait
        with self.changed:
            self.polls.append((client_id, wait))
            while not self._fresh(min_round, seen) and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())
            headers = {"ETag": self.etag, "X-Tributary-Selected": str(client_id in self.selected)}
            if seen == self.etag:
                return httpx.Response(304, headers=headers)
            self.bodies += 1
            message = {
                "protocol": 1,
                "round": self.server_round,
                "phase": self.phase,
                "model": "mlp",
                "selected": sorted(self.selected),
                "config": {},
                "weights": WEIGHTS,
            }
        return httpx.Response(200, content=encode_message(message), headers=headers)

    def _fresh(self, min_round: int, seen: str | None) -> bool:
        new = self.server_round >= min_round and self.etag != seen
        return new or self.phase == "finished"


def _client(server: LongPollServer, client_id: str, **kwargs: Any) -> AggregatorClient:
    return AggregatorClient(
        "http://agg.test",
        client_id=client_id,
        transport=httpx.MockTransport(server.handler),
        **kwargs,
    )


def test_clients_waiting_together_download_the_new_model_once() -> None:
    server, feed, stop = LongPollServer(), ModelFeed(), threading.Event()
    start_etag = server.etag
    replies: dict[str, WeightsReply | None] = {}

    def poll(client_id: str) -> None:
        with _client(server, client_id) as client:
            replies[client_id] = feed.get_weights(client, 1, start_etag, 10.0, stop)

    threads = [threading.Thread(target=poll, args=(str(k),)) for k in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # every client is waiting: one in the long poll, four on the feed
    server.publish(1, {"1", "3"})
    for thread in threads:
        thread.join(10.0)
    assert server.bodies == 1
    got = {cid: reply for cid, reply in replies.items() if reply is not None}
    assert sorted(got) == ["0", "1", "2", "3", "4"]
    assert {reply.server_round for reply in got.values()} == {1}
    assert {cid for cid, reply in got.items() if reply.is_selected} == {"1", "3"}
    assert len({id(reply.raw_weights) for reply in got.values()}) == 1  # one body, shared
    assert {cid for cid, _ in server.polls} == {"0", "1", "2", "3", "4"}  # all were seen


def test_a_model_the_server_has_replaced_is_not_handed_out() -> None:
    server, feed, stop = LongPollServer(), ModelFeed(), threading.Event()
    start_etag = server.etag
    server.publish(1, {"a", "b", "c"})
    with _client(server, "a") as a, _client(server, "b") as b, _client(server, "c") as c:
        first = feed.get_weights(a, 1, start_etag, 1.0, stop)
        server.publish(2, {"b"})
        second = feed.get_weights(b, 1, start_etag, 1.0, stop)  # the feed holds round 1
        third = feed.get_weights(c, 1, start_etag, 1.0, stop)
    assert first is not None
    assert first.server_round == 1
    assert second is not None
    assert second.server_round == 2
    assert second.is_selected
    assert third is not None
    assert third.server_round == 2
    assert not third.is_selected
    assert server.bodies == 2  # round 1 for a, round 2 for b; c confirmed with a 304


@contextlib.contextmanager
def _leading(
    server: LongPollServer, feed: ModelFeed, stop: threading.Event, wait: float
) -> Iterator[AggregatorClient]:
    """Have client "lead" hold the feed's long poll for `wait` s; yield client "other"."""
    etag = server.etag
    with _client(server, "lead") as lead, _client(server, "other") as other:
        leader = threading.Thread(target=feed.get_weights, args=(lead, 1, etag, wait, stop))
        leader.start()
        time.sleep(0.2)  # "lead" holds the long poll by now
        yield other
        leader.join(wait + 5.0)


def test_a_client_that_waited_in_vain_asks_the_server_once_and_gets_nothing() -> None:
    server, feed, stop = LongPollServer(), ModelFeed(), threading.Event()
    etag = server.etag
    with _leading(server, feed, stop, 1.5) as other:
        started = time.monotonic()
        assert feed.get_weights(other, 1, etag, 0.4, stop) is None
        assert 0.3 <= time.monotonic() - started < 1.4
    assert ("other", 0.0) in server.polls  # seen by the server, without a long poll
    assert server.bodies == 0


def test_a_stop_ends_a_wait_on_the_feed() -> None:
    server, feed, stop = LongPollServer(), ModelFeed(), threading.Event()
    etag = server.etag
    with _leading(server, feed, stop, 3.0) as other:
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        assert feed.get_weights(other, 1, etag, 30.0, stop) is None
        assert time.monotonic() - started < 2.5  # the stop is seen within STOP_CHECK_S


def test_a_client_that_did_not_download_still_spends_its_simulated_transfer_time() -> None:
    server, feed, stop = LongPollServer(), ModelFeed(), threading.Event()
    etag = server.etag
    server.publish(1, {"a", "b"})
    sleeps: list[float] = []
    network = NetworkSimulator(NetworkProfile(bandwidth_mbit=8), sleep=sleeps.append)
    with _client(server, "a") as a, _client(server, "b", network=network) as b:
        first = feed.get_weights(a, 1, etag, 1.0, stop)
        assert first is not None
        second = feed.get_weights(b, 1, etag, 1.0, stop)
    assert second is not None
    assert server.bodies == 1
    assert first.nbytes / 1e6 == pytest.approx(sum(sleeps), rel=0.01)  # 8 Mbit/s = 1 MB/s
