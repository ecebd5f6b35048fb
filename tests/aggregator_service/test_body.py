"""Request bodies: with and without Content-Length, under and over the limit."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    global_model,
    register,
    update_body,
    wait_for,
)


@pytest.fixture
def training(start_app: AppFactory) -> tuple[TestClient, dict[str, np.ndarray]]:
    """An aggregator in round 1 with clients a and b selected, and a 1 MiB body limit."""
    client = start_app(max_body_bytes=1 << 20)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    return client, weights


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_body_without_content_length_is_accepted(
    training: tuple[TestClient, dict[str, np.ndarray]],
) -> None:
    client, weights = training
    body = update_body("a", 1, weights)
    reply = client.post("/receive", content=_chunks(body), headers=MSGPACK)
    assert reply.status_code == 200, reply.text
    assert client.get("/status").json()["received_from"] == ["a"]


def test_chunked_body_over_the_limit_is_refused_while_streaming(
    training: tuple[TestClient, dict[str, np.ndarray]],
) -> None:
    client, weights = training
    body = update_body("a", 1, weights) + b"\x00" * (2 << 20)
    reply = client.post("/receive", content=_chunks(body, 1 << 16), headers=MSGPACK)
    assert reply.status_code == 413
    assert reply.json()["error"] == "body_too_large"
    assert client.get("/status").json()["received"] == 0


def test_body_read_into_a_preallocated_buffer_decodes_exactly(
    training: tuple[TestClient, dict[str, np.ndarray]],
) -> None:
    client, weights = training
    shifted = {k: (v + 1).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in weights.items()}
    for client_id, update in (("a", shifted), ("b", shifted)):
        body = update_body(client_id, 1, update)
        assert client.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(client, lambda s: s["round"] == 2)
    _, new = global_model(client)
    for name, array in shifted.items():
        np.testing.assert_array_equal(new[name], array)
