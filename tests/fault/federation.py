"""Talking to a real aggregator over HTTP: register, fetch the model, post known updates.

Updates here are deterministic (the global model plus a known shift, with a known
`num_examples`), so a test can compute the aggregate it expects without the service's code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from shared.wire import decode_message, decode_weights
from tests.aggregator_service.helpers import MSGPACK, shifted, update_body

__all__ = [
    "KnownUpdate",
    "assert_model_equals",
    "fetch_global",
    "known_updates",
    "post_update",
    "register_all",
    "weighted_mean",
]

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class KnownUpdate:
    """One client's update for one round, and its encoded POST /receive body."""

    client_id: str
    server_round: int
    num_examples: int
    weights: Weights
    body: bytes


def register_all(url: str, client_ids: Iterable[str], num_examples: int = 10) -> None:
    """POST /register for each client and assert it was accepted."""
    for client_id in client_ids:
        reply = httpx.post(
            f"{url}/register",
            json={"client_id": client_id, "num_examples": num_examples},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text


def fetch_global(url: str) -> tuple[dict[str, Any], Weights]:
    """GET /get_weights and return the decoded message and the global weights (copied)."""
    reply = httpx.get(f"{url}/get_weights", timeout=30)
    assert reply.status_code == 200, reply.text
    message = decode_message(reply.content)
    weights = {name: np.array(a) for name, a in decode_weights(message["weights"]).items()}
    return message, weights


def known_updates(
    base: Mapping[str, np.ndarray], client_ids: Iterable[str], server_round: int
) -> dict[str, KnownUpdate]:
    """Build client k's update: `base` shifted by 0.001 * (k + 1), from 3 * k + 5 examples."""
    updates = {}
    for k, client_id in enumerate(client_ids):
        weights = shifted(base, 0.001 * (k + 1))
        num_examples = 3 * k + 5
        body = update_body(client_id, server_round, weights, num_examples=num_examples)
        updates[client_id] = KnownUpdate(client_id, server_round, num_examples, weights, body)
    return updates


def post_update(url: str, update: KnownUpdate, *, timeout: float = 30) -> httpx.Response:
    """POST one update's body to /receive."""
    return httpx.post(f"{url}/receive", content=update.body, headers=MSGPACK, timeout=timeout)


def weighted_mean(updates: Iterable[KnownUpdate]) -> Weights:
    """Return the FedAvg aggregate of `updates`, computed here in float64.

    Floating tensors: the mean weighted by num_examples; integer tensors: the maximum.
    """
    chosen = list(updates)
    total = sum(u.num_examples for u in chosen)
    mean: Weights = {}
    for name, array in chosen[0].weights.items():
        if array.dtype.kind != "f":
            mean[name] = np.maximum.reduce([u.weights[name] for u in chosen])
            continue
        weighted = np.zeros(array.shape, np.float64)
        for update in chosen:
            weighted += update.num_examples * update.weights[name].astype(np.float64)
        mean[name] = (weighted / total).astype(array.dtype)
    return mean


def assert_model_equals(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> None:
    """Assert two models have the same tensors, equal to float32 rounding."""
    assert list(actual) == list(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        np.testing.assert_allclose(actual[name], array, rtol=1e-6, atol=1e-7, err_msg=name)
