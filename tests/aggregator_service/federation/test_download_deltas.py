"""GET /get_weights with download compression: steps against the model a worker holds.

After round 1 a worker naming the model it holds gets the round's q8 step instead of the
weights; adding it to its model gives the aggregator's global model bit for bit, the
model delta updates are added to. An unknown base (another process start, say) gets full
weights, a malformed one a 400, and /history counts the bytes sent beside the full model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from client_worker.transport import AggregatorClient
from shared.compression import apply_step
from shared.wire import decode_message, decode_weights, spec_of
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    register,
    shifted,
    update_body,
    wait_for,
)

Weights = dict[str, np.ndarray]
DOWNLOAD = {"encoding": "q8", "keep_versions": 2}


def started(start_app: AppFactory, **overrides: Any) -> TestClient:
    """An app with download compression in round 1, clients a and b selected."""
    config = experiment(download_compression=DOWNLOAD, num_rounds=3, **overrides)
    client = start_app(config, receive_rate=0)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    return client


def close_round(client: TestClient, server_round: int, model: Weights) -> None:
    """Post full-weight updates of a and b (the model shifted) and wait for the next round."""
    for client_id, shift in (("a", 0.01), ("b", -0.02)):
        body = update_body(client_id, server_round, shifted(model, shift))
        reply = client.post("/receive", content=body, headers=MSGPACK)
        assert reply.status_code == 200, reply.text
    wait_for(client, lambda s: s["round"] == server_round + 1 and s["phase"] == "training")


def server_model(client: TestClient) -> Weights:
    federation = client.app.state.federation  # type: ignore[attr-defined]
    return dict(federation.state.global_weights)


def same_bits(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_a_delta_download_lands_on_the_servers_model_bit_for_bit(start_app: AppFactory) -> None:
    client = started(start_app)
    first = client.get("/get_weights")
    etag = first.headers["ETag"]
    held = decode_weights(decode_message(first.content)["weights"])
    close_round(client, 1, held)

    full = client.get("/get_weights")
    delta = client.get("/get_weights", headers={"X-Tributary-Base": etag})
    assert delta.status_code == 200
    assert delta.headers["X-Tributary-Delta-Base"] == etag
    assert delta.headers["ETag"] == full.headers["ETag"]
    message = decode_message(delta.content)
    assert message["delta_base"] == etag
    assert "weights" not in message
    assert message["round"] == 2
    assert sorted(message["selected"]) == ["a", "b"]
    assert len(message["deltas"]) == 1
    assert len(delta.content) * 3 < len(full.content)  # q8: about 3.9x smaller
    resolved = apply_step(held, message["deltas"][0])
    assert same_bits(resolved, decode_weights(decode_message(full.content)["weights"]))
    assert same_bits(resolved, server_model(client))  # what updates' deltas are added to


def test_an_unknown_base_gets_full_weights_and_a_malformed_one_a_400(
    start_app: AppFactory,
) -> None:
    client = started(start_app)
    for base in ('"0123456789abcdef-999"', '"nobody"'):
        reply = client.get("/get_weights", headers={"X-Tributary-Base": base})
        assert reply.status_code == 200
        assert "X-Tributary-Delta-Base" not in reply.headers
        assert "weights" in decode_message(reply.content)
    for bad in ("no-quotes", '"a"b"', '"' + "x" * 200 + '"', '""'):
        reply = client.get("/get_weights", headers={"X-Tributary-Base": bad})
        assert reply.status_code == 400, bad
        assert reply.json()["error"] == "bad_base"


def test_history_counts_the_bytes_sent_and_the_full_models(start_app: AppFactory) -> None:
    client = started(start_app)
    first = client.get("/get_weights")
    held = decode_weights(decode_message(first.content)["weights"])
    close_round(client, 1, held)
    sent = []
    for base in (first.headers["ETag"], first.headers["ETag"], '"unknown"'):
        reply = client.get("/get_weights", headers={"X-Tributary-Base": base})
        sent.append(len(reply.content))
    full_nbytes = sent[-1]
    close_round(client, 2, server_model(client))
    row = client.get("/history").json()[1]
    assert row["round"] == 2
    assert row["bytes_out"] == sum(sent)
    assert row["raw_bytes_out"] == 3 * full_nbytes
    assert row["compression_out"] > 1.5


def test_without_the_section_the_base_header_changes_nothing(start_app: AppFactory) -> None:
    client = start_app(experiment(), receive_rate=0)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    plain = client.get("/get_weights")
    named = client.get("/get_weights", headers={"X-Tributary-Base": plain.headers["ETag"]})
    assert named.content == plain.content
    assert "download_compression" not in decode_message(plain.content)["config"]


def test_the_worker_resolves_steps_onto_the_model_it_holds(start_app: AppFactory) -> None:
    client = started(start_app)
    worker = AggregatorClient(
        "http://testserver",
        client_id="a",
        transport=client._transport,
    )
    first = worker.get_weights(1, wait=0)
    assert first is not None
    assert first.delta_base is None
    spec = spec_of(server_model(client))
    close_round(client, 1, first.weights(spec))
    second = worker.get_weights(2, first.etag, wait=0)
    assert second is not None
    assert second.delta_base == first.etag
    assert second.nbytes * 3 < first.nbytes
    assert same_bits(second.weights(spec), server_model(client))
    close_round(client, 2, second.weights(spec))
    third = worker.get_weights(3, second.etag, wait=0)  # a step onto a resolved model
    assert third is not None
    assert third.delta_base == second.etag
    assert same_bits(third.weights(spec), server_model(client))
    worker.close()


def test_after_a_restart_an_old_base_gets_the_checkpointed_chain_in_full(
    start_app: AppFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "restart"
    config = experiment(download_compression=DOWNLOAD, num_rounds=3)
    client = start_app(config, state_dir=state_dir, receive_rate=0)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    first = client.get("/get_weights")
    close_round(client, 1, decode_weights(decode_message(first.content)["weights"]))
    chained = server_model(client)
    client.__exit__(None, None, None)

    again = start_app(config, state_dir=state_dir, receive_rate=0)
    reply = again.get("/get_weights", headers={"X-Tributary-Base": first.headers["ETag"]})
    message = decode_message(reply.content)
    assert "delta_base" not in message
    assert same_bits(decode_weights(message["weights"]), chained)
