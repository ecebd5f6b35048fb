"""When rounds close, retry and finish: the pure rule and the loop that applies it."""

from __future__ import annotations

import pytest

from aggregator_service.federation.rounds import close_decision
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)


@pytest.mark.parametrize(
    ("selected", "received", "in_flight", "threshold", "deadline_passed", "expected"),
    [
        (3, 3, 0, False, False, "close"),  # every selected client reported
        (3, 2, 0, False, False, "wait"),  # min_fit reached, but no threshold rule, no deadline
        (3, 2, 0, True, False, "close"),  # close as soon as min_fit_clients (2) arrived
        (3, 1, 0, True, False, "wait"),
        (3, 2, 0, False, True, "close"),  # deadline with enough updates
        (3, 1, 0, False, True, "retry"),  # deadline with too few: never aggregate
        (3, 0, 0, True, True, "retry"),
        (3, 3, 1, False, True, "wait"),  # an update still being ingested finishes first
    ],
)
def test_close_decision(
    selected: int,
    received: int,
    in_flight: int,
    threshold: bool,
    deadline_passed: bool,
    expected: str,
) -> None:
    decision = close_decision(
        selected=selected,
        received=received,
        in_flight=in_flight,
        min_fit_clients=2,
        close_at_threshold=threshold,
        deadline_passed=deadline_passed,
    )
    assert decision == expected


def test_close_at_threshold_aggregates_without_waiting_for_everyone(start_app: AppFactory) -> None:
    client = start_app(
        experiment(min_fit_clients=2, min_available_clients=4, close_at_threshold=True)
    )
    register(client, "a", "b", "c", "d")
    status = wait_for(client, lambda s: s["phase"] == "training")
    assert status["needed"] == 2
    _, weights = global_model(client)
    for client_id in status["selected"][:2]:
        reply = client.post("/receive", content=update_body(client_id, 1, weights), headers=MSGPACK)
        assert reply.status_code == 200
    wait_for(client, lambda s: s["round"] == 2)
    (row,) = client.get("/history").json()
    assert len(row["participants"]) == 2


def test_deadline_with_too_few_retries_then_closes(start_app: AppFactory) -> None:
    client = start_app(experiment(min_fit_clients=2, min_available_clients=2, round_timeout_s=0.4))
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    assert client.post("/receive", content=update_body("a", 1, weights), headers=MSGPACK).is_success
    retried = wait_for(client, lambda s: s["attempt"] >= 1)
    assert retried["round"] == 1
    assert retried["received_from"] == ["a"]  # the accepted update is kept
    assert client.get("/history").json() == []  # never aggregated from too few
    assert client.post("/receive", content=update_body("b", 1, weights), headers=MSGPACK).is_success
    wait_for(client, lambda s: s["round"] == 2)
    (row,) = client.get("/history").json()
    assert row["participants"] == ["a", "b"]
    assert row["attempts"] >= 2


def test_deadline_with_enough_closes_with_the_survivors(start_app: AppFactory) -> None:
    client = start_app(experiment(min_fit_clients=2, min_available_clients=3, round_timeout_s=0.5))
    register(client, "a", "b", "c")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    for client_id in ("a", "b"):
        client.post("/receive", content=update_body(client_id, 1, weights), headers=MSGPACK)
    wait_for(client, lambda s: s["round"] == 2)
    (row,) = client.get("/history").json()
    assert row["participants"] == ["a", "b"]


def test_selection_is_seeded_and_reproducible(start_app: AppFactory, tmp_path: object) -> None:
    config = experiment(min_fit_clients=2, min_available_clients=6, fraction_fit=0.5, seed=11)
    selections = []
    for run in range(2):
        client = start_app(config, state_dir=tmp_path / f"run{run}")  # type: ignore[operator]
        register(client, *"abcdef")
        selections.append(wait_for(client, lambda s: s["phase"] == "training")["selected"])
    assert selections[0] == selections[1]
    assert len(selections[0]) == 3
