"""Limits under abuse: rate limit, upload queue, long-poll cap, and errors that leak nothing."""

from __future__ import annotations

import asyncio
import functools
import mmap
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from aggregator_service.api.app import create_app
from aggregator_service.api.limits import RateLimiter, UploadGate
from aggregator_service.settings import AggregatorSettings
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)
from tests.aggregator_service.serving import bearer, serve, write_tokens


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate_per_key() -> None:
    clock = _Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # one token per 1/rate seconds
    assert limiter.take("b") == 0.0  # every key has its own bucket
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 10.0  # refills up to the burst, not beyond
    assert [limiter.take("a") for _ in range(4)][-1] == pytest.approx(0.5)
    unlimited = RateLimiter(rate=0.0, burst=1, clock=clock)
    assert all(unlimited.take("a") == 0.0 for _ in range(100))


def _wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_rate_limit_per_client_answers_429_with_retry_after_then_recovers(
    start_app: AppFactory, tmp_path: Path
) -> None:
    tokens = write_tokens(tmp_path / "tokens.txt", "a", "b")
    client = start_app(tokens_file=tmp_path / "tokens.txt", receive_rate=4.0, receive_burst=2)

    def post(cid: str) -> httpx.Response:
        headers = {**MSGPACK, **bearer(tokens[cid])}
        reply: httpx.Response = client.post("/receive", content=b"\xc1", headers=headers)
        return reply

    assert [post("a").status_code for _ in range(2)] == [400, 400]  # malformed, but let in
    limited = post("a")
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert limited.headers["retry-after"] == "1"  # 0.25 s rounded up to whole seconds
    assert post("b").status_code == 400  # another client is not affected
    time.sleep(0.3)  # one token back at 4 per second
    assert post("a").status_code == 400
    metrics = client.get("/metrics", headers=bearer(tokens["b"])).text
    assert 'tributary_rejected_total{reason="rate_limited"} 1' in metrics


def test_without_authentication_there_is_no_rate_limit(start_app: AppFactory) -> None:
    # one host may simulate hundreds of clients, and nothing tells them apart without tokens
    client = start_app(receive_rate=1.0, receive_burst=2)
    codes = [client.post("/receive", content=b"\xc1", headers=MSGPACK).status_code for _ in "abcd"]
    assert codes == [400, 400, 400, 400]


def _slow_upload(url: str, declared: int) -> socket.socket:
    """Start a POST /receive that sends its headers and 10 bytes of a longer body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /receive HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/msgpack\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\xc1" * 10)
    return sock


def test_full_upload_queue_answers_503_at_once_with_retry_after(tmp_path: Path) -> None:
    settings = AggregatorSettings(
        state_dir=tmp_path / "state", max_concurrent_uploads=1, max_queued_uploads=1
    )
    app = create_app(settings, experiment())
    with serve(app) as (url, _):
        gate = app.state.upload_gate
        holding = _slow_upload(url, 1000)  # holds the only slot while its body trickles in
        _wait_until(lambda: gate.admitted == 1)
        waiting = _slow_upload(url, 1000)  # waits in the line of one
        _wait_until(lambda: gate.admitted == 2)
        started = time.monotonic()
        busy = httpx.post(f"{url}/receive", content=b"\xc1", headers=MSGPACK, timeout=10)
        assert time.monotonic() - started < 5  # refused at once, not queued
        assert busy.status_code == 503
        assert busy.json()["error"] == "server_busy"
        assert busy.headers["retry-after"] == "2"
        for sock in (holding, waiting):  # finish both bodies: each then gets its answer
            sock.sendall(b"\xc1" * 990)
            assert sock.recv(200).startswith(b"HTTP/1.1 400")
            sock.close()
        _wait_until(lambda: gate.admitted == 0)
        again = httpx.post(f"{url}/receive", content=b"\xc1", headers=MSGPACK, timeout=10)
        assert again.status_code == 400


@pytest.mark.parametrize("protocol", ["h11", "httptools"])
def test_a_stalled_upload_gets_408_and_gives_its_slot_to_the_next(
    tmp_path: Path, protocol: str
) -> None:
    settings = AggregatorSettings(
        state_dir=tmp_path / "state", max_concurrent_uploads=1, body_idle_timeout_s=0.5
    )
    app = create_app(settings, experiment())
    with serve(app, http=protocol) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        register(client, "a", "b")
        wait_for(client, lambda s: s["phase"] == "training")
        _, weights = global_model(client)
        # timed from before the stalled upload's first byte: its idle limit runs from the
        # last byte it sent, so however late this thread gets to post, the slot frees after
        started = time.monotonic()
        stalled = _slow_upload(url, 8 << 20)  # takes the only slot; the rest never comes
        _wait_until(lambda: app.state.upload_gate.admitted == 1)
        reply = client.post("/receive", content=update_body("a", 1, weights), headers=MSGPACK)
        waited = time.monotonic() - started
        assert reply.status_code == 200, reply.text
        assert 0.3 < waited < 10  # it waited for the stalled upload's idle limit, no longer
        answer = stalled.recv(4096)
        stalled.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer
        assert 'reason="body_timeout"} 1' in client.get("/metrics").text


def test_a_slow_upload_that_keeps_sending_is_not_cut_off(tmp_path: Path) -> None:
    settings = AggregatorSettings(state_dir=tmp_path / "state", body_idle_timeout_s=0.4)
    app = create_app(settings, experiment())
    with serve(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        register(client, "a", "b")
        wait_for(client, lambda s: s["phase"] == "training")
        _, weights = global_model(client)
        body = update_body("a", 1, weights)
        pieces = [body[i : i + len(body) // 8 + 1] for i in range(0, len(body), len(body) // 8 + 1)]

        def trickle() -> Iterator[bytes]:
            for piece in pieces:  # about 1.4 s in all, 0.15 s between pieces
                time.sleep(0.15)
                yield piece

        headers = {**MSGPACK, "Content-Length": str(len(body))}
        reply = client.post("/receive", content=trickle(), headers=headers)
        assert reply.status_code == 200, reply.text


def test_a_slot_hands_its_body_buffer_to_the_upload_waiting_in_line() -> None:
    size = 2 << 20
    bodies: dict[str, weakref.ref[mmap.mmap]] = {}
    reused: list[bool] = []

    async def scenario() -> UploadGate:
        gate = UploadGate(slots=1, max_waiting=2)
        first_may_end = asyncio.Event()

        async def upload(name: str) -> None:
            async with gate.admit() as slot:
                body = slot.take(size)
                assert isinstance(body.obj, mmap.mmap)
                if name == "second":
                    reused.append(body.obj is bodies["first"]())
                bodies[name] = weakref.ref(body.obj)
                if name == "first":
                    await first_may_end.wait()

        first = asyncio.create_task(upload("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(upload("second"))
        await asyncio.sleep(0)
        assert (gate.holding, gate.waiting) == (1, 1)
        first_may_end.set()
        await asyncio.gather(first, second)
        return gate

    gate = asyncio.run(scenario())
    assert reused == [True]
    assert bodies["second"]() is None  # nobody was in line after the second: unmapped
    assert (gate.admitted, gate.holding) == (0, 0)


def test_uploads_one_at_a_time_get_fresh_buffers_and_keep_none() -> None:
    gate = UploadGate(slots=2, max_waiting=2)
    seen: list[weakref.ref[mmap.mmap]] = []

    async def upload() -> None:
        async with gate.admit() as slot:
            buffer = slot.take(2 << 20).obj
            assert isinstance(buffer, mmap.mmap)  # the slot's buffer is a mapping of its own
            seen.append(weakref.ref(buffer))

    for _ in range(2):
        asyncio.run(upload())
    assert [ref() for ref in seen] == [None, None]


def test_prepare_from_another_thread_stocks_a_zeroed_buffer_per_free_slot() -> None:
    payload = 3 << 20
    taken: list[tuple[int, int]] = []

    async def scenario() -> UploadGate:
        gate = UploadGate(slots=2, max_waiting=2)
        loop = asyncio.get_running_loop()
        thread = threading.Thread(target=gate.prepare, args=(payload, loop))
        thread.start()
        thread.join()
        await _until_async(lambda: gate.kept == 2)
        async with gate.admit() as slot:
            body = slot.take(payload + 100)
            taken.append((gate.kept, body.nbytes))  # one kept buffer is now the body
            assert bytes(body[:4096]) == bytes(4096)
        assert gate.kept == 0  # nobody waited: its buffer and the spare one are unmapped
        gate.prepare(payload, loop)
        await _until_async(lambda: gate.kept == 2)
        gate.prepare(None, loop)  # the round is over: nothing stays mapped
        await _until_async(lambda: gate.kept == 0)
        return gate

    asyncio.run(scenario())
    assert taken == [(1, payload + 100)]


def test_each_open_round_has_a_ready_body_buffer_per_slot_and_a_finished_run_none(
    start_app: AppFactory,
) -> None:
    client = start_app(experiment(model="cnn", num_rounds=2), max_concurrent_uploads=2)
    gate = client.app.state.upload_gate  # type: ignore[attr-defined]
    register(client, "a", "b")
    for server_round in (1, 2):
        wait_for(client, functools.partial(_training, server_round=server_round))
        _wait_until(lambda: gate.kept == 2)
        _, weights = global_model(client)
        for client_id in ("a", "b"):
            body = update_body(client_id, server_round, weights)
            assert len(body) > 1 << 20  # large enough for a mapped buffer
            reply = client.post("/receive", content=body, headers=MSGPACK)
            assert reply.status_code == 200, reply.text
    wait_for(client, lambda s: s["phase"] == "finished")
    _wait_until(lambda: gate.kept == 0)


def _training(status: dict[str, Any], *, server_round: int) -> bool:
    return bool(status["round"] == server_round and status["phase"] == "training")


async def _until_async(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_long_poll_cap_refuses_to_hold_more_with_503(start_app: AppFactory) -> None:
    client = start_app(max_long_polls=1)
    gate = client.app.state.long_poll_gate  # type: ignore[attr-defined]
    etag = client.get("/get_weights").headers["etag"]
    held: dict[str, int] = {}

    def long_poll() -> None:
        reply = client.get("/get_weights", params={"wait": 20}, headers={"If-None-Match": etag})
        held["status"] = reply.status_code

    poller = threading.Thread(target=long_poll)
    poller.start()
    _wait_until(lambda: gate.held == 1)
    refused = client.get("/get_weights", params={"wait": 20}, headers={"If-None-Match": etag})
    assert refused.status_code == 503
    assert refused.json()["error"] == "too_many_polls"
    assert int(refused.headers["retry-after"]) >= 1
    assert client.get("/get_weights").status_code == 200  # nothing to wait for: answered
    register(client, "a", "b")  # round 1 opens: a new model wakes the held poll
    poller.join(10)
    assert held["status"] == 200
    assert gate.held == 0
    etag = client.get("/get_weights").headers["etag"]
    quiet = client.get("/get_weights", params={"wait": 0.1}, headers={"If-None-Match": etag})
    assert quiet.status_code == 304


def _assert_leaks_nothing(reply: httpx.Response, tmp_path: Path) -> None:
    text = reply.text
    assert str(tmp_path) not in text, text
    assert "Traceback" not in text, text
    assert 'File "' not in text, text
    assert ".py" not in text, text
    assert set(reply.json()) >= {"error", "detail"}


def test_a_failing_state_dir_answers_503_without_paths_and_changes_nothing(
    start_app: AppFactory, tmp_path: Path
) -> None:
    client = start_app(max_body_bytes=4 << 20)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    updates_dir = tmp_path / "state" / "updates"
    shutil.rmtree(updates_dir)
    updates_dir.write_text("not a directory")  # every update write now fails
    reply = client.post("/receive", content=update_body("a", 1, weights), headers=MSGPACK)
    assert reply.status_code == 503
    assert reply.json()["error"] == "storage_unavailable"
    assert "retry-after" in reply.headers
    _assert_leaks_nothing(reply, tmp_path)
    status = client.get("/status").json()
    assert (status["received"], status["in_progress"]) == (0, [])


def test_no_error_answer_carries_a_path_or_a_traceback(
    start_app: AppFactory, tmp_path: Path
) -> None:
    client = start_app(max_body_bytes=4 << 20)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    answers = [
        client.get("/no/such/path"),
        client.delete("/status"),
        client.post("/register", json={"client_id": "../../etc/passwd"}),
        client.get("/get_weights", params={"wait": "soon"}),
        client.post("/receive", content=b"\xc1garbage", headers=MSGPACK),
        client.post("/receive", content=b"x" * (5 << 20), headers=MSGPACK),
        client.post("/receive", content=update_body("a", 1, weights), headers={"a": "b"}),
        client.post(
            "/receive",
            content=update_body("a", 1, {"w": next(iter(weights.values()))}),
            headers=MSGPACK,
        ),
    ]
    assert [a.status_code for a in answers] == [404, 405, 422, 422, 400, 413, 415, 422]
    assert answers[0].json()["error"] == "not_found"
    for reply in answers:
        _assert_leaks_nothing(reply, tmp_path)


def test_an_unexpected_error_answers_500_without_its_message(tmp_path: Path) -> None:
    settings = AggregatorSettings(state_dir=tmp_path / "state")
    app = create_app(settings, experiment())
    with TestClient(app, raise_server_exceptions=False) as client:

        def broken() -> dict[str, object]:
            raise RuntimeError(f"cannot open {tmp_path}/secret.db")

        app.state.federation.state.status = broken
        reply = client.get("/status")
    assert reply.status_code == 500
    assert reply.json()["error"] == "internal_error"
    _assert_leaks_nothing(reply, tmp_path)
