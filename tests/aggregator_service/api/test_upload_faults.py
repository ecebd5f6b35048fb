"""POST /receive against misbehaving clients, on a real server: raw sockets, bounded waits."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from tests.aggregator_service.helpers import MSGPACK, experiment, global_model, register, wait_for
from tests.aggregator_service.serving import serve

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
