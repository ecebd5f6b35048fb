"""The aggregator's endpoints, through its real FastAPI app (lifespan included)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from shared.evaluation import EvalResult
from shared.wire import decode_message
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    shifted,
    update_body,
    wait_for,
)


def test_waits_for_min_available_clients_then_opens_round(start_app: AppFactory) -> None:
    client = start_app()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/status").json()["phase"] == "waiting"
    register(client, "a")
    assert client.get("/status").json()["phase"] == "waiting"
    register(client, "b")
    status = wait_for(client, lambda s: s["phase"] == "training")
    assert status["round"] == 1
    assert status["selected"] == ["a", "b"]
    assert status["registered_clients"] == 2


def test_get_weights_serves_msgpack_with_round_config_and_selection(start_app: AppFactory) -> None:
    client = start_app()
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    reply = client.get("/get_weights", params={"client_id": "a"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/msgpack"
    assert reply.headers["x-tributary-selected"] == "true"
    assert reply.headers["x-tributary-round"] == "1"
    message = decode_message(reply.content)
    assert message["protocol"] == 1
    assert message["round"] == 1
    assert message["phase"] == "training"
    assert message["model"] == "mlp"
    assert message["selected"] == ["a", "b"]
    assert message["config"]["local_epochs"] == 1
    assert (
        client.get("/get_weights", params={"client_id": "zz"}).headers["x-tributary-selected"]
        == "false"
    )


def test_etag_gives_304_without_body(start_app: AppFactory) -> None:
    client = start_app()
    first = client.get("/get_weights")
    etag = first.headers["etag"]
    again = client.get("/get_weights", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag


def test_a_304_tells_the_client_its_round_phase_and_selection(start_app: AppFactory) -> None:
    client = start_app()
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    etag = client.get("/get_weights").headers["etag"]
    for client_id, selected in (("a", "true"), ("zz", "false")):
        reply = client.get(
            "/get_weights",
            params={"client_id": client_id, "min_round": 1, "wait": 0},
            headers={"If-None-Match": etag},
        )
        assert reply.status_code == 304
        assert reply.content == b""
        assert reply.headers["x-tributary-selected"] == selected
        assert reply.headers["x-tributary-round"] == "1"
        assert reply.headers["x-tributary-phase"] == "training"


def test_payload_is_built_once_and_identical_across_requests(start_app: AppFactory) -> None:
    client = start_app()
    bodies = {client.get("/get_weights").content for _ in range(3)}
    assert len(bodies) == 1


def test_long_poll_returns_when_the_next_round_is_published(start_app: AppFactory) -> None:
    client = start_app()
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    result: dict[str, object] = {}

    def poll() -> None:
        reply = client.get("/get_weights", params={"min_round": 2, "wait": 20})
        result["round"] = decode_message(reply.content)["round"]

    poller = threading.Thread(target=poll)
    poller.start()
    poller.join(0.3)
    assert poller.is_alive(), "the long poll answered before round 2 existed"
    for client_id in ("a", "b"):
        reply = client.post("/receive", content=update_body(client_id, 1, weights), headers=MSGPACK)
        assert reply.status_code == 200
    poller.join(10)
    assert result["round"] == 2


def test_long_poll_times_out_with_304_when_nothing_changed(start_app: AppFactory) -> None:
    client = start_app()
    etag = client.get("/get_weights").headers["etag"]
    reply = client.get("/get_weights", params={"wait": 0.2}, headers={"If-None-Match": etag})
    assert reply.status_code == 304


def test_round_aggregates_weighted_mean_and_records_history(start_app: AppFactory) -> None:
    client = start_app()
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    updates = {"a": (shifted(weights, 1.0), 1), "b": (shifted(weights, 5.0), 3)}
    for client_id, (update, n) in updates.items():
        reply = client.post(
            "/receive", content=update_body(client_id, 1, update, num_examples=n), headers=MSGPACK
        )
        assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body == {"accepted": True, "duplicate": False, "round": 1, "received": 2, "needed": 2}
    wait_for(client, lambda s: s["round"] == 2)
    message, new = global_model(client)
    assert message["round"] == 2
    for name, array in weights.items():
        expected = (array.astype(np.float64) + (1.0 * 1 + 5.0 * 3) / 4).astype(array.dtype)
        np.testing.assert_allclose(new[name], expected, rtol=1e-6, atol=1e-6)
    (row,) = client.get("/history").json()
    assert row["round"] == 1
    assert row["participants"] == ["a", "b"]
    assert row["num_examples"] == 4
    assert row["train_loss"] == pytest.approx(0.5)
    assert row["bytes_in"] > 2 * sum(a.nbytes for a in weights.values())
    reported = {
        cid: {key: value for key, value in fields.items() if key not in ("received_s", "upload_s")}
        for cid, fields in row["clients"].items()
    }
    assert reported == {
        "a": {"num_examples": 1, "train_loss": 0.5},
        "b": {"num_examples": 3, "train_loss": 0.5},
    }
    assert all(fields["received_s"] >= 0 for fields in row["clients"].values())


def test_every_publish_has_its_own_etag_and_a_summary_of_its_payload(
    start_app: AppFactory,
) -> None:
    client = start_app()
    waiting = client.get("/get_weights")
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    training = client.get("/get_weights")
    assert waiting.headers["etag"] != training.headers["etag"]
    summary = client.get("/model").json()
    assert summary["sha256"] == hashlib.sha256(training.content).hexdigest()
    assert summary["payload_bytes"] == len(training.content)
    as_json = client.get("/get_weights", headers={"accept": "application/json"}).json()
    assert as_json == summary


def test_duplicate_is_counted_once_and_stale_round_gets_409(start_app: AppFactory) -> None:
    client = start_app(experiment(min_fit_clients=2, min_available_clients=3))
    register(client, "a", "b", "c")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    body = update_body("a", 1, shifted(weights, 1.0))
    assert client.post("/receive", content=body, headers=MSGPACK).json()["duplicate"] is False
    again = client.post("/receive", content=body, headers=MSGPACK)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["received"] == 1
    stale = client.post("/receive", content=update_body("b", 7, weights), headers=MSGPACK)
    assert stale.status_code == 409
    assert stale.json()["error"] == "stale_round"
    assert stale.json()["round"] == 1


def test_model_summary_for_curl(start_app: AppFactory) -> None:
    client = start_app()
    summary = client.get("/model").json()
    assert summary["round"] == 1
    assert summary["model"] == "mlp"
    assert summary["total_parameters"] == 199_210
    assert summary["total_bytes"] == 199_210 * 4
    first = next(iter(summary["tensors"].values()))
    assert set(first) == {"shape", "dtype", "l2_norm"}
    as_json = client.get("/get_weights", headers={"Accept": "application/json"})
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json()["sha256"] == summary["sha256"]
    payload = client.get("/get_weights").content
    assert hashlib.sha256(payload).hexdigest() == summary["sha256"]


def test_metrics_and_openapi(start_app: AppFactory) -> None:
    client = start_app()
    text = client.get("/metrics").text
    assert "tributary_round 1" in text
    assert "# TYPE tributary_updates_accepted_total counter" in text
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/get_weights", "/receive", "/register", "/status", "/history", "/model"):
        assert path in paths
    assert "application/msgpack" in paths["/receive"]["post"]["requestBody"]["content"]


def test_finishes_after_num_rounds_and_answers_long_polls_at_once(start_app: AppFactory) -> None:
    client = start_app(experiment(num_rounds=1))
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    for client_id in ("a", "b"):
        client.post("/receive", content=update_body(client_id, 1, weights), headers=MSGPACK)
    status = wait_for(client, lambda s: s["phase"] == "finished")
    assert status["round"] == 1
    reply = client.get("/get_weights", params={"min_round": 2, "wait": 30})
    assert decode_message(reply.content)["phase"] == "finished"


def test_server_side_evaluation_goes_to_history(tmp_path: Path) -> None:
    evaluated: list[float] = []

    def evaluator(weights: Mapping[str, np.ndarray]) -> EvalResult:
        norm = float(sum(np.abs(a).sum() for a in weights.values() if a.dtype.kind == "f"))
        evaluated.append(norm)
        return EvalResult(loss=0.25, accuracy=0.75, num_examples=100)

    settings = AggregatorSettings(state_dir=tmp_path / "state")
    app = create_app(settings, experiment(num_rounds=1, server_eval=True), evaluator=evaluator)
    with TestClient(app) as client:
        register(client, "a", "b")
        wait_for(client, lambda s: s["phase"] == "training")
        _, weights = global_model(client)
        for client_id in ("a", "b"):
            client.post("/receive", content=update_body(client_id, 1, weights), headers=MSGPACK)
        wait_for(client, lambda s: s["phase"] == "finished")
        (row,) = client.get("/history").json()
        assert "tributary_eval_accuracy 0.75" in client.get("/metrics").text
    assert len(evaluated) == 1
    assert row["eval_accuracy"] == 0.75
    assert row["eval_loss"] == 0.25
