"""Async mode under faults: a kill -9 of the aggregator mid-buffer, and a worker killed
mid-training while the others go on making versions.

Real processes on loopback. The first test posts deterministic updates with httpx, so the
version it expects is computed here (tests/fault/federation.py): with fresh updates
(staleness 0) and server_lr 1, FedBuff's step is FedAvg's weighted mean.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fault.federation import (
    assert_model_equals,
    fetch_global,
    known_updates,
    post_update,
    register_all,
    weighted_mean,
)
from tests.fault.procs import Processes, cpu_seconds, get_json, wait_healthy, wait_until

pytestmark = pytest.mark.slow

ASYNC = ("mode=async", "dataset=mnist5k", "model=mlp", "server_eval=false")


def test_sigkill_mid_buffer_keeps_acknowledged_updates(procs: Processes, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    clients = ["c0", "c1", "c2", "c3"]
    overrides = (*ASYNC, "async.buffer_size=3", "num_rounds=2", "min_available_clients=4")
    first = procs.aggregator(state_dir, *overrides)
    register_all(first.url, clients)
    status = wait_until(first.url, lambda s: s["phase"] == "training", timeout=20)
    assert status["selected"] == clients
    _, start = fetch_global(first.url)
    updates = known_updates(start, clients, server_round=1)
    for client_id in ("c0", "c1"):
        assert post_update(first.url, updates[client_id]).status_code == 200

    first.kill()  # SIGKILL with two of the buffer's three updates acknowledged
    second = procs.aggregator(state_dir, *overrides, name="aggregator-restarted")

    status = get_json(second.url, "/status")
    assert (status["round"], status["phase"], status["version"]) == (1, "training", 0)
    assert status["received_from"] == ["c0", "c1"]
    assert status["training"] == {"c2": 1, "c3": 1}  # their slots survived the restart
    again = post_update(second.url, updates["c1"])
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert post_update(second.url, updates["c2"]).status_code == 200
    wait_until(second.url, lambda s: s["round"] == 2, timeout=30)

    _, version_1 = fetch_global(second.url)
    assert_model_equals(version_1, weighted_mean(updates[c] for c in ("c0", "c1", "c2")))
    (row,) = get_json(second.url, "/history")
    assert row["participants"] == ["c0", "c1", "c2"]
    assert row["staleness"]["counts"] == {"0": 3}


# The victim's slot is given to it again once round_timeout_s has passed since it was
# handed out; the restarted worker then trains from the newest version.
SLOT_TIMEOUT_S = 12.0


def test_worker_killed_mid_training_the_others_go_on_and_it_rejoins(
    procs: Processes, tmp_path: Path
) -> None:
    overrides = (
        *ASYNC,
        "async.buffer_size=2",
        "num_rounds=200",  # the test ends the run: it waits for the victim to come back
        "min_available_clients=4",
        "local_epochs=30",
        f"round_timeout_s={SLOT_TIMEOUT_S}",
    )
    aggregator = procs.aggregator(tmp_path / "state", *overrides, wait=False)
    url = aggregator.url
    procs.virtual_workers(url, "1-3", num_partitions=16, name="workers-1-3")
    victim = procs.worker(url, "0", partition_id=0, num_partitions=1, name="worker-0")
    wait_healthy(aggregator)
    wait_until(url, lambda s: s["round"] >= 3, timeout=120, describe=procs.logs)
    assert "0" in get_json(url, "/status")["training"]  # still on its 4000 examples

    before = cpu_seconds(victim.pid)
    time.sleep(2.0)  # the cores are shared with the three other clients
    assert cpu_seconds(victim.pid) - before > 0.2, "the victim is not training"
    victim.kill()
    killed_at = get_json(url, "/status")["round"]
    wait_until(url, lambda s: s["round"] >= killed_at + 2, timeout=60, describe=procs.logs)
    assert all("0" not in row["participants"] for row in get_json(url, "/history"))

    procs.worker(url, "0", partition_id=0, num_partitions=16, name="worker-0-restarted")
    wait_until(
        url,
        lambda s: any("0" in row["participants"] for row in get_json(url, "/history")),
        timeout=SLOT_TIMEOUT_S + 90,
        describe=procs.logs,
    )
    rows = get_json(url, "/history")
    assert all(len(row["participants"]) >= 2 for row in rows)
    assert [row["version"] for row in rows] == list(range(1, len(rows) + 1))
