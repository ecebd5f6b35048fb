"""Bad input gets a clear JSON error with the right status and never changes the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)


@pytest.fixture
def training(start_app: AppFactory) -> tuple[TestClient, dict[str, np.ndarray]]:
    """An aggregator in round 1 with clients a, b, c registered and a, b selected."""
    client = start_app(
        experiment(min_fit_clients=2, min_available_clients=3, fraction_fit=0.5, seed=3),
        max_body_bytes=4 << 20,
    )
    register(client, "a", "b", "c")
    status = wait_for(client, lambda s: s["phase"] == "training")
    assert len(status["selected"]) == 2
    _, weights = global_model(client)
    return client, weights


def _first(weights: dict[str, np.ndarray]) -> str:
    return next(iter(weights))


def _selected(client: TestClient) -> list[str]:
    return list(client.get("/status").json()["selected"])


Case = Callable[[str, dict[str, np.ndarray]], tuple[bytes, dict[str, str]]]


def _raw(message: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(message))


CASES: dict[str, tuple[Case, int, str]] = {
    "wrong content type": (
        lambda cid, w: (update_body(cid, 1, w), {"content-type": "application/json"}),
        415,
        "unsupported_media_type",
    ),
    "not msgpack": (lambda cid, w: (b"\xc1\x00garbage", MSGPACK), 400, "malformed_message"),
    "truncated": (
        lambda cid, w: (update_body(cid, 1, w)[:-100], MSGPACK),
        400,
        "malformed_message",
    ),
    "not a map": (lambda cid, w: (_raw([1, 2, 3]), MSGPACK), 400, "malformed_message"),  # type: ignore[arg-type]
    "unknown protocol": (
        lambda cid, w: (update_body(cid, 1, w, protocol=3), MSGPACK),
        400,
        "unsupported_protocol",
    ),
    "wrong shape": (
        lambda cid, w: (
            update_body(cid, 1, {**w, _first(w): np.zeros((3, 3), np.float32)}),
            MSGPACK,
        ),
        422,
        "invalid_tensor",
    ),
    "wrong dtype": (
        lambda cid, w: (
            update_body(cid, 1, {**w, _first(w): w[_first(w)].astype(np.float64)}),
            MSGPACK,
        ),
        422,
        "invalid_tensor",
    ),
    "missing tensor": (
        lambda cid, w: (update_body(cid, 1, dict(list(w.items())[1:])), MSGPACK),
        422,
        "invalid_tensor",
    ),
    "unknown tensor": (
        lambda cid, w: (update_body(cid, 1, {**w, "extra": np.zeros(2, np.float32)}), MSGPACK),
        422,
        "invalid_tensor",
    ),
    "NaN": (
        lambda cid, w: (
            update_body(cid, 1, {**w, _first(w): np.full_like(w[_first(w)], np.nan)}),
            MSGPACK,
        ),
        422,
        "invalid_tensor",
    ),
    "Inf": (
        lambda cid, w: (
            update_body(cid, 1, {**w, _first(w): np.full_like(w[_first(w)], np.inf)}),
            MSGPACK,
        ),
        422,
        "invalid_tensor",
    ),
    "zero examples": (
        lambda cid, w: (update_body(cid, 1, w, num_examples=0), MSGPACK),
        422,
        "invalid_update",
    ),
    "absurd examples": (
        lambda cid, w: (update_body(cid, 1, w, num_examples=10**12), MSGPACK),
        422,
        "invalid_update",
    ),
    "float examples": (
        lambda cid, w: (update_body(cid, 1, w, num_examples=2.5), MSGPACK),  # type: ignore[arg-type]
        422,
        "invalid_update",
    ),
    "client id with slash": (
        lambda cid, w: (update_body("../etc", 1, w), MSGPACK),
        422,
        "invalid_update",
    ),
    "unknown field": (
        lambda cid, w: (update_body(cid, 1, w, surprise=1), MSGPACK),
        422,
        "invalid_update",
    ),
    "NaN metric": (
        lambda cid, w: (update_body(cid, 1, w, metrics={"train_loss": float("nan")}), MSGPACK),
        422,
        "invalid_update",
    ),
    "too many metrics": (
        lambda cid, w: (
            update_body(cid, 1, w, metrics={f"m{i}": 1.0 for i in range(33)}),
            MSGPACK,
        ),
        422,
        "invalid_update",
    ),
    "metric name with space": (
        lambda cid, w: (update_body(cid, 1, w, metrics={"train loss": 1.0}), MSGPACK),
        422,
        "invalid_update",
    ),
    "too large": (
        lambda cid, w: (update_body(cid, 1, w) + b"\x00" * (5 << 20), MSGPACK),
        413,
        "body_too_large",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_without_changing_state(
    training: tuple[TestClient, dict[str, np.ndarray]], case: str
) -> None:
    client, weights = training
    make, status, code = CASES[case]
    client_id = _selected(client)[0]
    before = client.get("/model").json()["sha256"]
    body, headers = make(client_id, weights)
    reply = client.post("/receive", content=body, headers=headers)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] == code
    assert reply.json()["detail"]
    assert "Traceback" not in reply.text
    state = client.get("/status").json()
    assert state["received"] == 0
    assert state["in_progress"] == []
    assert client.get("/model").json()["sha256"] == before
    # the same client can still post a good update afterwards
    good = client.post("/receive", content=update_body(client_id, 1, weights), headers=MSGPACK)
    assert good.status_code == 200, good.text


def test_tensor_errors_name_the_tensor(training: tuple[TestClient, dict[str, np.ndarray]]) -> None:
    client, weights = training
    name = _first(weights)
    body = update_body(_selected(client)[0], 1, {**weights, name: np.zeros(5, np.float32)})
    reply = client.post("/receive", content=body, headers=MSGPACK)
    assert reply.json()["tensor"] == name
    assert name in reply.json()["detail"]


def test_client_not_selected_gets_409(training: tuple[TestClient, dict[str, np.ndarray]]) -> None:
    client, weights = training
    (outsider,) = {"a", "b", "c"} - set(_selected(client))
    reply = client.post("/receive", content=update_body(outsider, 1, weights), headers=MSGPACK)
    assert reply.status_code == 409
    assert reply.json()["error"] == "not_selected"


def test_oversized_declared_length_is_refused_before_reading(
    training: tuple[TestClient, dict[str, np.ndarray]],
) -> None:
    client, _ = training

    def body() -> Any:
        yield b"\x80"  # the refusal must not need the (never sent) rest of the body

    headers = {**MSGPACK, "content-length": str(64 << 20)}
    reply = client.post("/receive", content=body(), headers=headers)
    assert reply.status_code == 413


def test_bad_register_requests(start_app: AppFactory) -> None:
    client = start_app()
    assert client.post("/register", json={"client_id": ""}).status_code == 422
    assert client.post("/register", json={"client_id": "a", "num_examples": -1}).status_code == 422
    assert client.post("/register", content=b"\xff", headers=MSGPACK).status_code == 422
