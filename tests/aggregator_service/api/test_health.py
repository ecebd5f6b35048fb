"""GET /healthz and the admin endpoints once the round loop has died on an unexpected error."""

from __future__ import annotations

import time

import httpx
import pytest

from aggregator_service.store.run_store import RunStore
from aggregator_service.strategy.fedavg import FedAvg
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
from tests.aggregator_service.serving import bearer

ADMIN = "admin-" + "0123456789abcdefghijklmnopqrstuvwxyz"


def _broken(*args: object, **kwargs: object) -> None:
    raise RuntimeError("an unexpected bug")


def _wait_for_health(client: httpx.Client, status_code: int, timeout: float = 10) -> httpx.Response:
    """Poll /healthz until it answers `status_code` (the round loop runs in its own thread)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = client.get("/healthz")
        if reply.status_code == status_code:
            return reply
        assert time.monotonic() < deadline, f"/healthz still answers {reply.status_code}"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("owner", "method"),
    [(FedAvg, "aggregate"), (RunStore, "save_checkpoint")],
    ids=["aggregation fails", "checkpoint fails"],
)
def test_healthz_and_admin_answer_503_once_the_round_loop_has_died(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch, owner: type, method: str
) -> None:
    client = start_app(experiment(), admin_token=ADMIN)
    admin = bearer(ADMIN)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    assert client.get("/healthz").json() == {"status": "ok"}
    _, weights = global_model(client)
    monkeypatch.setattr(owner, method, _broken)  # the round loop meets it when round 1 closes
    for client_id in ("a", "b"):
        body = update_body(client_id, 1, shifted(weights, 0.01))
        reply = client.post("/receive", content=body, headers=MSGPACK)
        assert reply.status_code == 200, reply.text

    health = _wait_for_health(client, 503)
    assert health.json()["status"] == "failing"
    assert "Traceback" not in health.text
    for path in ("/admin/stop", "/admin/skip_round"):
        reply = client.post(path, headers=admin)
        assert reply.status_code == 503, (path, reply.text)
        assert reply.json()["error"] == "loop_stopped"
    assert client.get("/healthz").status_code == 503  # it stays dead: nothing restarts it
