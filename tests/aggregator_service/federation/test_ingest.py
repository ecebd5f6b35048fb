"""Taking in updates through POST /receive: a refused update leaves no trace in the round."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

import numpy as np
import pytest

from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

Weights = dict[str, np.ndarray]


def _local_model(weights: Mapping[str, np.ndarray], seed: int) -> Weights:
    """The global model moved by a different random step per client (floating tensors)."""
    rng = np.random.default_rng(seed)
    return {
        name: (a + rng.normal(0.0, 0.1, a.shape)).astype(a.dtype) if a.dtype.kind == "f" else a
        for name, a in weights.items()
    }


def _weighted_mean(
    global_weights: Mapping[str, np.ndarray], updates: list[tuple[Weights, int]]
) -> Weights:
    """sum(w_i * n_i) / sum(n_i) in float64, cast to the global model's dtypes."""
    total = sum(n for _, n in updates)
    mean: Weights = {}
    for name, array in global_weights.items():
        weighted = np.zeros(array.shape, np.float64)
        for weights, n in updates:
            weighted += weights[name].astype(np.float64) * n
        mean[name] = (weighted / total).astype(array.dtype)
    return mean


def test_an_update_refused_because_it_cannot_be_persisted_is_not_aggregated(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start_app(experiment(min_fit_clients=3, min_available_clients=3))
    register(client, "a", "b", "c")
    status = wait_for(client, lambda s: s["phase"] == "training")
    assert status["selected"] == ["a", "b", "c"]
    _, weights = global_model(client)
    updates = {
        cid: (_local_model(weights, seed), n)
        for seed, (cid, n) in enumerate([("a", 5), ("b", 8), ("c", 11)])
    }
    bodies = {cid: update_body(cid, 1, w, num_examples=n) for cid, (w, n) in updates.items()}

    accepted = client.post("/receive", content=bodies["a"], headers=MSGPACK)
    assert accepted.status_code == 200, accepted.text

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as disk_error:  # the state dir cannot persist b's update
        disk_error.setattr(os, "fsync", failing_fsync)
        refused = client.post("/receive", content=bodies["b"], headers=MSGPACK)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "storage_unavailable"
    status = client.get("/status").json()
    assert (status["received_from"], status["in_progress"]) == (["a"], [])

    for client_id in ("c", "b"):  # b sends the same update again, as a worker does after a 503
        reply = client.post("/receive", content=bodies[client_id], headers=MSGPACK)
        assert reply.status_code == 200, reply.text
        assert reply.json()["duplicate"] is False
    wait_for(client, lambda s: s["round"] == 2)

    _, aggregated = global_model(client)
    expected = _weighted_mean(weights, [updates["a"], updates["c"], updates["b"]])
    for name, array in expected.items():
        assert aggregated[name].dtype == array.dtype, name
        np.testing.assert_allclose(aggregated[name], array, rtol=1e-6, atol=1e-7, err_msg=name)
    (row,) = client.get("/history").json()
    assert row["participants"] == ["a", "b", "c"]
    assert row["num_examples"] == 5 + 8 + 11
