"""Delta updates with compressed tensors through POST /receive: refusals, the round they make."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shared.compression import CompressionSpec, decode_update, encode_update
from shared.compression.varint import encode_uvarints
from shared.wire import decode_message, encode_message, spec_of
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
TOPK = {"encoding": "topk", "fraction": 0.1}
LARGE = "1.weight"  # the 2NN's 200 x 784 layer: compressed under every spec


def started(
    start_app: AppFactory, compression: Mapping[str, Any] | None, state_dir: Path | None = None
) -> tuple[TestClient, Weights]:
    """An app in round 1 with clients a and b selected; its client and global weights."""
    overrides: dict[str, Any] = {"compression": dict(compression)} if compression else {}
    client = start_app(experiment(**overrides), state_dir=state_dir, receive_rate=0)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    return client, {name: np.array(a) for name, a in weights.items()}


def random_deltas(weights: Weights, seed: int) -> Weights:
    """Small float32 deltas for the floating tensors; integer tensors keep their values."""
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(a.shape) * 0.01).astype(a.dtype) if a.dtype.kind == "f" else a
        for name, a in weights.items()
    }


def on_the_wire(tensors: Mapping[str, Any]) -> Any:
    """Return tensors as a receiver decodes them: plain arrays as raw tensor maps."""
    return decode_message(encode_message({"weights": tensors}))["weights"]


def post(client: TestClient, client_id: str, tensors: Mapping[str, Any], **fields: Any) -> Any:
    body = update_body(client_id, 1, tensors, **fields)
    return client.post("/receive", content=body, headers=MSGPACK)


def next_model(client: TestClient) -> Weights:
    wait_for(client, lambda s: s["round"] == 2)
    _, weights = global_model(client)
    return dict(weights)


# ------------------------------------------------------------------ the round


@pytest.mark.parametrize(
    ("compression", "exact"),
    [
        ({"encoding": "f16"}, True),
        ({"encoding": "topk", "fraction": 0.05}, True),
        ({"encoding": "q8", "rounding": "stochastic"}, False),
        ({"encoding": "topk", "fraction": 0.1, "values": "q8"}, False),
    ],
)
def test_a_compressed_round_equals_the_round_of_its_decoded_deltas(
    start_app: AppFactory, tmp_path: Path, compression: dict[str, Any], exact: bool
) -> None:
    spec = CompressionSpec.from_mapping(compression)
    compressed, weights = started(start_app, compression)
    # the reference: the same decoded deltas as plain float32 maps, into a second app
    plain, _ = started(start_app, compression, tmp_path / "plain")
    sent = {}
    for client_id, seed, num_examples in (("a", 1, 10), ("b", 2, 30)):
        deltas = random_deltas(weights, seed)
        encoded = encode_update(deltas, spec, np.random.default_rng(seed))
        decoded = decode_update(on_the_wire(encoded), spec_of(weights))
        for target, tensors in ((compressed, encoded), (plain, decoded)):
            reply = post(target, client_id, tensors, delta=True, num_examples=num_examples)
            assert reply.status_code == 200, reply.text
        sent[client_id] = decoded
    got, want = next_model(compressed), next_model(plain)
    for name, array in weights.items():
        if exact:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:  # q8's pieces are decoded into float64, the plain maps into float32 first
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7)
        mean = (10 * sent["a"][name].astype(np.float64) + 30 * sent["b"][name]) / 40
        if array.dtype.kind == "f":
            np.testing.assert_allclose(got[name], array + mean, rtol=1e-5, atol=1e-6)
    row = compressed.get("/history").json()[-1]
    assert row["raw_bytes_in"] > row["bytes_in"]
    assert row["compression_in"] == pytest.approx(row["raw_bytes_in"] / row["bytes_in"], 1e-3)
    plain_row = plain.get("/history").json()[-1]
    assert plain_row["compression_in"] == 1.0


def test_an_uncompressed_run_refuses_delta_updates(start_app: AppFactory) -> None:
    client, weights = started(start_app, None)
    reply = post(client, "a", random_deltas(weights, 1), delta=True)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == "invalid_update"
    assert "compression" in reply.json()["detail"]


def test_delta_updates_in_a_compressed_run_may_also_send_full_weights(
    start_app: AppFactory,
) -> None:
    client, weights = started(start_app, TOPK)
    assert post(client, "a", weights).status_code == 200
    zeros = {n: np.zeros_like(a) if a.dtype.kind == "f" else a for n, a in weights.items()}
    assert post(client, "b", zeros, delta=True).status_code == 200
    new = next_model(client)
    for name, array in weights.items():
        np.testing.assert_array_equal(new[name], array, err_msg=name)


# ------------------------------------------------------------------ refusals


def _q8(weights: Weights) -> dict[str, Any]:
    spec = CompressionSpec(encoding="q8")
    encoded: dict[str, Any] = encode_update(random_deltas(weights, 3), spec)
    return encoded


def _topk_map(shape: list[int], gaps: list[int]) -> dict[str, Any]:
    return {
        "encoding": "topk",
        "dtype": "float32",
        "shape": shape,
        "nnz": len(gaps),
        "indices": encode_uvarints(np.array(gaps, np.uint64)),
        "values": np.ones(len(gaps), np.float32).tobytes(),
    }


def _case(kind: str, weights: Weights) -> dict[str, Any]:
    tensors = _q8(weights)
    shape = list(weights[LARGE].shape)
    size = int(np.prod(shape))
    large = dict(tensors[LARGE])
    if kind == "wrong block count":
        large["scales"] = large["scales"][:-4]
    elif kind == "NaN scale":
        large["scales"] = np.float32("nan").tobytes() + large["scales"][4:]
    elif kind == "unknown encoding":
        large["encoding"] = "q3"
    elif kind == "index out of range":
        large = _topk_map(shape, [3, size])
    elif kind == "duplicate indices":
        large = _topk_map(shape, [5, 0])
    elif kind == "wrong shape":
        large["shape"] = shape[::-1]
    return {**tensors, LARGE: large}


CASES = [
    "wrong block count",
    "NaN scale",
    "unknown encoding",
    "index out of range",
    "duplicate indices",
    "wrong shape",
]


@pytest.mark.parametrize("kind", CASES)
def test_a_malformed_compressed_tensor_is_422_naming_it(start_app: AppFactory, kind: str) -> None:
    client, weights = started(start_app, {"encoding": "q8"})
    before = client.get("/model").json()["sha256"]
    reply = post(client, "a", _case(kind, weights), delta=True)
    assert reply.status_code == 422, reply.text
    body = reply.json()
    assert body["error"] == "invalid_tensor"
    assert body["tensor"] == LARGE
    status = client.get("/status").json()
    assert (status["received"], status["in_progress"]) == (0, [])
    assert client.get("/model").json()["sha256"] == before
    # the slot is free again: the same client's valid update is taken, and the round closes
    assert post(client, "a", _q8(weights), delta=True).status_code == 200
    assert post(client, "b", _q8(weights), delta=True).status_code == 200
    assert next_model(client).keys() == weights.keys()


def test_a_restart_counts_the_compressed_updates_it_resumes_as_before(
    start_app: AppFactory, tmp_path: Path
) -> None:
    spec = CompressionSpec(encoding="q8")
    state_dir = tmp_path / "restarted"
    restarted, weights = started(start_app, {"encoding": "q8"}, state_dir)
    steady, _ = started(start_app, {"encoding": "q8"}, tmp_path / "steady")
    bodies = {
        cid: encode_update(random_deltas(weights, seed), spec) for cid, seed in (("a", 1), ("b", 2))
    }
    for target in (restarted, steady):
        assert post(target, "a", bodies["a"], delta=True).status_code == 200
    restarted.__exit__(None, None, None)  # the aggregator goes away with a's update journalled
    restarted = start_app(experiment(compression={"encoding": "q8"}), state_dir=state_dir)
    for target in (restarted, steady):
        assert post(target, "b", bodies["b"], delta=True).status_code == 200
    rows = []
    for target in (restarted, steady):
        next_model(target)
        rows.append(target.get("/history").json()[-1])
    assert rows[0]["raw_bytes_in"] == rows[1]["raw_bytes_in"]
    assert rows[0]["raw_bytes_in"] > rows[0]["bytes_in"]
    assert rows[0]["compression_in"] == rows[1]["compression_in"]
