"""POST /receive against misbehaving clients, on a real server: raw sockets, bounded waits."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from tests.aggregator_service.helpers import (
    MSGPACK,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)
from tests.aggregator_service.serving import bearer, serve, write_tokens

MIB = 1 << 20


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _open_upload(
    url: str, declared: int, sent: bytes = b"", headers: dict[str, str] | None = None
) -> socket.socket:
    """Start a POST /receive: its headers, then `sent`, the first bytes of its body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    lines = [
        "POST /receive HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/msgpack",
        f"Content-Length: {declared}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
    return sock


def _settings(tmp_path: Path, **overrides: Any) -> AggregatorSettings:
    return AggregatorSettings(state_dir=tmp_path / "state", **overrides)


@pytest.fixture
def training(tmp_path: Path) -> Iterator[tuple[FastAPI, httpx.Client, dict[str, Any]]]:
    """A served aggregator in round 1 (clients a and b), one upload slot, and its weights."""
    app = create_app(_settings(tmp_path, max_concurrent_uploads=1), experiment())
    with serve(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        register(client, "a", "b")
        wait_for(client, lambda s: s["phase"] == "training")
        _, weights = global_model(client)
        yield app, client, weights


def test_a_client_that_disconnects_mid_body_is_its_own_failure_and_frees_the_slot(
    training: tuple[FastAPI, httpx.Client, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    app, client, _ = training
    gate = app.state.upload_gate
    caplog.set_level(logging.INFO, logger="aggregator_service")
    url = str(client.base_url).rstrip("/")
    sock = _open_upload(url, 8 * MIB, b"\x00" * MIB)
    _until(lambda: gate.holding == 1)
    sock.close()  # gone in the middle of its body
    _until(lambda: gate.admitted == 0)  # the slot is free again
    metrics = client.get("/metrics").text
    assert 'tributary_rejected_total{reason="client_disconnected"} 1' in metrics
    assert "internal_error" not in metrics
    lines = [r for r in caplog.records if "client_disconnected" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback anywhere


HONEST_BOUND_S = 15.0  # every honest update is in this soon despite the abusers (security.md)


def _answered(sock: socket.socket, stop: threading.Event, *, drip: bool) -> bytes:
    """Wait for the server's answer, sending one body byte every 0.5 s if `drip`."""
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            return sock.recv(4096)
        except TimeoutError:
            if drip:
                sock.sendall(b"\x00")
    return b""


def _abuse(
    url: str, token: str, stop: threading.Event, answers: list[bytes], *, drip: bool
) -> None:
    """Keep an upload of 8 MiB open, stalled or dripping; open another once it is answered."""
    while not stop.is_set():
        try:
            with _open_upload(url, 8 * MIB, b"\x00" * 10, bearer(token)) as sock:
                answers.append(_answered(sock, stop, drip=drip))
        except OSError:  # refused and closed by the server while we were sending
            time.sleep(0.05)


def _post_until_accepted(client: httpx.Client, body: bytes, token: str) -> tuple[int, float]:
    """Post like a worker (retrying 429 and 503 after Retry-After); return status and time."""
    started = time.monotonic()
    while True:
        reply = client.post("/receive", content=body, headers={**MSGPACK, **bearer(token)})
        waited = time.monotonic() - started
        if reply.status_code not in (429, 503) or waited > HONEST_BOUND_S:
            return reply.status_code, waited
        time.sleep(min(float(reply.headers.get("retry-after", "1")), 2.0))


def test_one_client_stalling_and_another_dripping_keep_no_honest_update_out(
    tmp_path: Path,
) -> None:
    honest = ["h1", "h2", "h3"]
    tokens = write_tokens(tmp_path / "tokens.txt", *honest, "staller", "dripper")
    settings = _settings(
        tmp_path,
        tokens_file=tmp_path / "tokens.txt",
        max_concurrent_uploads=2,
        max_queued_uploads=4,
        body_idle_timeout_s=1,  # the staller's upload ends after this
        min_upload_rate_bytes_s=64 * 1024,  # the dripper's (2 bytes/s) after the grace
        upload_grace_s=2,
        receive_rate=0,  # no rate limit: the abusers may try as often as they like
    )
    app = create_app(settings, experiment(min_available_clients=5, min_fit_clients=5))
    stop = threading.Event()
    answers: list[bytes] = []
    with (
        serve(app) as (url, _),
        httpx.Client(base_url=url, timeout=30, headers=bearer(tokens["h1"])) as client,
    ):
        for cid, token in tokens.items():
            reply = client.post("/register", json={"client_id": cid}, headers=bearer(token))
            assert reply.status_code == 200, reply.text
        status = wait_for(client, lambda s: s["phase"] == "training" and len(s["selected"]) == 5)
        _, weights = global_model(client)
        abusers = [
            threading.Thread(
                target=_abuse, args=(url, tokens[cid], stop, answers), kwargs={"drip": drip}
            )
            for cid, drip in (("staller", False), ("dripper", True))
            for _ in range(4)  # each opens four uploads at once, again and again
        ]
        for thread in abusers:
            thread.start()
        try:
            _until(lambda: app.state.upload_gate.holding == 2)  # both slots are taken
            with ThreadPoolExecutor(len(honest)) as pool:
                results = list(
                    pool.map(
                        lambda cid: _post_until_accepted(
                            client, update_body(cid, status["round"], weights), tokens[cid]
                        ),
                        honest,
                    )
                )
            _until(lambda: 'reason="body_too_slow"' in client.get("/metrics").text)  # dripper's
        finally:
            stop.set()
            for thread in abusers:
                thread.join(10)
        metrics = client.get("/metrics").text
    assert [code for code, _ in results] == [200, 200, 200], results
    assert max(waited for _, waited in results) < HONEST_BOUND_S
    assert 'reason="upload_in_progress"' in metrics  # the second upload of each: refused at once
    assert 'reason="body_timeout"' in metrics  # the staller's
    assert not any(thread.is_alive() for thread in abusers)


def test_an_upload_waits_for_a_slot_at_most_the_queue_timeout(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, max_concurrent_uploads=1, upload_queue_timeout_s=0.5, body_idle_timeout_s=20
    )
    app = create_app(settings, experiment())
    with serve(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        with _open_upload(url, 8 * MIB, b"\x00" * 10):  # holds the only slot, stalled
            _until(lambda: app.state.upload_gate.holding == 1)
            started = time.monotonic()
            reply = client.post("/receive", content=b"\xc1", headers=MSGPACK)
            waited = time.monotonic() - started
        assert reply.status_code == 503
        assert reply.json()["error"] == "server_busy"
        assert reply.headers["retry-after"] == "2"
        assert 0.4 < waited < 5  # the queue timeout, not the stalled upload's 20 s


def _rss() -> int:
    """Resident bytes of this process (the server runs in one of its threads)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stalled_upload(url: str, declared: int, sent: int) -> bytes:
    """Send `sent` bytes of a body of `declared` bytes, stall, and return the answer."""
    with _open_upload(url, declared, b"\x00" * sent) as sock:
        return sock.recv(4096)


def test_uploads_refused_with_408_keep_none_of_their_body_in_memory(tmp_path: Path) -> None:
    settings = _settings(tmp_path, body_idle_timeout_s=0.3)
    app = create_app(settings, experiment())
    with serve(app) as (url, _):
        assert _stalled_upload(url, 64 * MIB, 4 * MIB).startswith(b"HTTP/1.1 408")  # warm-up
        before = _rss()
        for _ in range(5):  # 64 MiB declared each, 4 MiB of it sent
            answer = _stalled_upload(url, 64 * MIB, 4 * MIB)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        _until(lambda: app.state.upload_gate.admitted == 0)
        grown = _rss() - before
    assert grown < 4 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"  # not one partial body kept


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_every_upload_accepted_or_refused_reaches_the_access_log(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_body_bytes=16 * MIB, body_idle_timeout_s=0.3)
    app = create_app(settings, experiment(model="cnn"))
    access = logging.getLogger("uvicorn.access")
    handler = _Lines()
    with serve(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        level = access.level
        access.setLevel(logging.INFO)  # serve() runs uvicorn at log level "warning"
        access.addHandler(handler)
        try:
            register(client, "a", "b")
            wait_for(client, lambda s: s["phase"] == "training")
            _, weights = global_model(client)
            body = update_body("a", 1, weights)
            assert len(body) > MIB  # a large body: the mapped buffer's path
            answers = [
                client.post("/receive", content=body, headers=MSGPACK).status_code,
                client.post("/receive", content=b"\xc1", headers=MSGPACK).status_code,
                client.post("/receive", content=body, headers={"a": "b"}).status_code,
                client.post("/receive", content=b"\x00" * (17 * MIB), headers=MSGPACK).status_code,
            ]
            stalled = _stalled_upload(url, 8 * MIB, 1000)
            _until(lambda: sum("POST /receive" in line for line in handler.lines) == 5)
        finally:
            access.removeHandler(handler)
            access.setLevel(level)
    assert answers == [200, 400, 415, 413]
    assert stalled.startswith(b"HTTP/1.1 408")
    posts = [line.rsplit(" ", 1)[-1] for line in handler.lines if "POST /receive" in line]
    assert posts == ["200", "400", "415", "413", "408"]


IDLE_CONNECTIONS = 200
IDLE_CONNECTION_MAX_BYTES = 16 << 10  # both ends' Python objects, per connection (security.md)


def test_an_idle_connection_costs_a_few_kib_and_uvicorn_does_not_close_it(
    tmp_path: Path,
) -> None:
    app = create_app(_settings(tmp_path), experiment())
    with serve(app, http="httptools", timeout_keep_alive=1) as (url, server):
        connections = server.server_state.connections
        host, port = url.removeprefix("http://").split(":")
        before = _rss()
        socks = [
            socket.create_connection((host, int(port)), timeout=10) for _ in range(IDLE_CONNECTIONS)
        ]
        try:
            _until(lambda: len(connections) == IDLE_CONNECTIONS)
            per_connection = (_rss() - before) / IDLE_CONNECTIONS
            time.sleep(2.5)  # over twice timeout_keep_alive: no timer runs before a request
            for sock in socks:
                sock.settimeout(0.001)
                with pytest.raises(TimeoutError):  # still open: b"" would mean closed
                    sock.recv(1)
            assert len(connections) == IDLE_CONNECTIONS
        finally:
            for sock in socks:
                sock.close()
        _until(lambda: not connections)
    assert per_connection < IDLE_CONNECTION_MAX_BYTES, f"{per_connection:.0f} bytes"
