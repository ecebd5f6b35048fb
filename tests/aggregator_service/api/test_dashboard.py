"""The dashboard's endpoints without a browser: /, /ui, /clients, /events, the viewer token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from aggregator_service.api.app import create_app
from aggregator_service.api.auth import Access
from aggregator_service.api.routes.dashboard import prefers_html
from aggregator_service.federation.board import client_state
from aggregator_service.federation.ledger import ClientTally
from aggregator_service.federation.state import RoundState, UpdateRecord
from aggregator_service.settings import AggregatorSettings
from shared.errors import ConfigError
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
from tests.aggregator_service.serving import bearer, serve, write_tokens

ADMIN = "admin-" + "0123456789abcdefghijklmnopqrstuvwxyz"
VIEWER = "viewer-" + "zyxwvutsrqponmlkjihgfedcba9876543210"
CHROME_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


def events(client: TestClient, **headers: str) -> list[tuple[str, Any]]:
    """Read one batch of GET /events (the app's long_poll_max_s is 0: the stream ends)."""
    with client.stream("GET", "/events", headers=headers) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = "".join(reply.iter_text())
    parsed = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            parsed.append((fields["event"], json.loads(fields["data"])))
    return parsed


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (CHROME_ACCEPT, True),
        ("text/html", True),
        ("*/*", False),
        ("", False),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=bad", False),
    ],
)
def test_only_a_browser_asking_for_html_is_sent_to_the_page(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


def test_root_redirects_browsers_and_answers_others_as_before(start_app: AppFactory) -> None:
    client = start_app()
    page = client.get("/", headers={"Accept": CHROME_ACCEPT}, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/ui"
    plain = client.get("/", headers={"Accept": "*/*"})
    assert plain.status_code == 404
    assert plain.json()["error"] == "not_found"
    assert client.head("/").status_code == 404


def test_the_page_and_its_files_are_served_from_the_package(start_app: AppFactory) -> None:
    client = start_app()
    page = client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("dashboard.js", "charts.js", "format.js", "dashboard.css"):
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200, name
        assert f'"/ui/{name}"' in page.text
    assert "http" not in page.text.replace('"http://www.w3.org', "")  # nothing from elsewhere
    assert client.get("/ui/..%2fapp.py").status_code == 404
    assert client.get("/ui/index.html.bak").status_code == 404


def test_clients_shows_each_clients_round(start_app: AppFactory) -> None:
    client = start_app(experiment(min_fit_clients=2, min_available_clients=2, num_rounds=2))
    register(client, "a", "b")
    status = wait_for(client, lambda s: s["phase"] == "training")
    board = client.get("/clients").json()
    assert [(c["client_id"], c["state"]) for c in board["clients"]] == [
        ("a", "selected"),
        ("b", "selected"),
    ]
    _, weights = global_model(client)
    client.get("/get_weights", params={"client_id": "a"})
    body = update_body("a", status["round"], shifted(weights, 0.01))
    assert client.post("/receive", content=body, headers=MSGPACK).status_code == 200
    stale = update_body("b", status["round"] + 5, weights)
    assert client.post("/receive", content=stale, headers=MSGPACK).status_code == 409
    rows = {c["client_id"]: c for c in client.get("/clients").json()["clients"]}
    assert rows["a"]["state"] == "reported"
    assert rows["a"]["bytes_in"] == len(body)
    assert rows["a"]["bytes_out"] > 0
    assert rows["a"]["train_loss"] == 0.5
    assert rows["a"]["received_s"] >= 0
    assert rows["b"]["state"] == "refused"
    assert rows["b"]["refusal"]["code"] == "stale_round"
    assert "round" in rows["b"]["refusal"]["message"]


def test_a_closed_round_times_its_updates_in_history(start_app: AppFactory) -> None:
    client = start_app(experiment(num_rounds=1))
    register(client, "a", "b")
    status = wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    for cid in ("a", "b"):
        body = update_body(cid, status["round"], weights)
        assert client.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(client, lambda s: s["phase"] == "finished")
    row = client.get("/history").json()[-1]
    assert row["selected"] == ["a", "b"]
    assert row["started_at"] <= row["finished_at"]
    for cid in ("a", "b"):
        assert 0 <= row["clients"][cid]["received_s"] <= row["duration_s"]
        assert row["clients"][cid]["upload_s"] >= 0


def test_the_event_stream_sends_the_state_the_rounds_and_the_model(
    start_app: AppFactory,
) -> None:
    client = start_app(long_poll_max_s=0)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    sent = events(client)
    names = [name for name, _ in sent]
    assert names == ["state", "rounds", "model"]  # the first batch: everything, once
    state = sent[0][1]
    assert state["status"]["phase"] == "training"
    assert [c["client_id"] for c in state["clients"]["clients"]] == ["a", "b"]
    assert state["run"]["strategy"] == {"name": "fedavg"}
    assert sent[1][1] == []  # no round closed yet
    assert sent[2][1] == client.get("/model").json()


def test_the_viewer_token_reads_but_does_nothing_else(
    start_app: AppFactory, tmp_path: Path
) -> None:
    tokens = write_tokens(tmp_path / "tokens.txt", "a", "b")
    client = start_app(
        tokens_file=tmp_path / "tokens.txt",
        admin_token=ADMIN,
        viewer_token=VIEWER,
        long_poll_max_s=0,
    )
    viewer = bearer(VIEWER)
    for path in ("/status", "/history", "/clients", "/model", "/metrics", "/get_weights"):
        assert client.get(path, headers=viewer).status_code == 200, path
    assert next(name for name, _ in events(client, **viewer)) == "state"
    refused = [
        client.post("/register", json={"client_id": "a"}, headers=viewer),
        client.post("/receive", content=b"x", headers={**MSGPACK, **viewer}),
        client.get("/get_weights", params={"client_id": "a"}, headers=viewer),
        client.post("/admin/stop", headers=viewer),
        client.post("/admin/skip_round", headers=viewer),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert client.get("/clients").status_code == 401
    assert client.get("/clients", headers=bearer(tokens["a"])).status_code == 200


def test_a_viewer_token_must_be_strong_single_and_its_own(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="viewer token"):
        Access({"a": "a" * 16 + "0123456789abcdef"}, ADMIN, ADMIN)
    weak = AggregatorSettings(state_dir=tmp_path, viewer_token="short")
    with pytest.raises(ConfigError, match="the viewer token in TRIBUTARY_AGG_VIEWER_TOKEN"):
        Access.from_settings(weak)
    token_file = tmp_path / "viewer.token"
    token_file.write_text(VIEWER + "\n")
    token_file.chmod(0o600)
    with pytest.raises(ValueError, match="viewer token is given twice"):
        AggregatorSettings(
            state_dir=tmp_path,
            viewer_token_file=token_file,
            viewer_token=VIEWER,
        )
    settings = AggregatorSettings(state_dir=tmp_path, viewer_token_file=token_file)
    assert Access.from_settings(settings).identify(VIEWER) is not None


def test_the_stream_tells_of_a_change_within_a_second(tmp_path: Path) -> None:
    settings = AggregatorSettings(state_dir=tmp_path / "state", long_poll_max_s=30)
    app = create_app(settings, experiment(min_available_clients=3))
    with serve(app) as (url, _), httpx.stream("GET", f"{url}/events", timeout=10) as stream:
        lines = stream.iter_lines()
        first = _next_state(lines)
        assert first["status"]["registered_clients"] == 0
        started = time.monotonic()
        assert httpx.post(f"{url}/register", json={"client_id": "a"}).status_code == 200
        changed = _next_state(lines)
        assert time.monotonic() - started < 1.0
        assert [c["client_id"] for c in changed["clients"]["clients"]] == ["a"]


def _next_state(lines: Iterator[str]) -> dict[str, Any]:
    """Return the data of the next `state` event."""
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "state":
            state: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return state
    raise AssertionError("the stream ended")


def test_late_and_dropped_clients_are_told_apart() -> None:
    current = RoundState(3, "training", selected=frozenset({"a", "b"}), deadline=100.0)
    current.received["a"] = UpdateRecord("a", 10, {}, 1)
    tally = ClientTally()
    last = {"selected": ["a", "c"], "participants": ["a"]}
    assert client_state("a", current, tally, last, now=50.0) == "reported"
    assert client_state("b", current, tally, last, now=50.0) == "selected"
    assert client_state("b", current, ClientTally(fetched_round=3), last, now=50.0) == "training"
    assert client_state("b", current, tally, last, now=150.0) == "late"
    assert client_state("c", current, tally, last, now=50.0) == "dropped"  # in the last round
    assert client_state("d", current, tally, last, now=50.0) == "idle"
    current.phase = "aggregating"
    assert client_state("b", current, tally, last, now=50.0) == "dropped"
