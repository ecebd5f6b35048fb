"""kill -9 of the aggregator mid-round: after a restart on the same state dir, the round
completes with every acknowledged update counted exactly once.

The updates are posted here with httpx and are deterministic, so the aggregate the test
expects is computed independently (tests/fault/federation.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fault.federation import (
    KnownUpdate,
    assert_model_equals,
    fetch_global,
    known_updates,
    post_update,
    register_all,
    weighted_mean,
)
from tests.fault.procs import Processes, get_json, wait_until

pytestmark = pytest.mark.slow

SMALL = ("dataset=mnist5k", "server_eval=false", "round_timeout_s=120")


def one_round_of(num_clients: int, model: str = "mlp") -> tuple[str, ...]:
    """Overrides for a one-round run of `model` that waits for all `num_clients`."""
    n = str(num_clients)
    fixed = (f"model={model}", *SMALL, "num_rounds=1")
    return (*fixed, f"min_fit_clients={n}", f"min_available_clients={n}")


# The MLP's 0.8 MB updates are journalled once they are in; the CNN's 6.6 MB ones while
# they arrive (aggregator_service/store/journal_stream.py).
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_sigkill_mid_round_keeps_acknowledged_updates(
    procs: Processes, tmp_path: Path, model: str
) -> None:
    state_dir = tmp_path / "state"
    clients = ["c0", "c1", "c2", "c3"]
    first = procs.aggregator(state_dir, *one_round_of(4, model))
    register_all(first.url, clients)
    wait_until(first.url, lambda s: s["phase"] == "training", timeout=20)
    _, start = fetch_global(first.url)
    updates = known_updates(start, clients, server_round=1)
    for client_id in ("c0", "c1"):
        reply = post_update(first.url, updates[client_id])
        assert reply.status_code == 200, reply.text
        assert reply.json()["duplicate"] is False

    first.kill()  # SIGKILL: no shutdown code runs
    second = procs.aggregator(state_dir, *one_round_of(4, model), name="aggregator-restarted")

    status = get_json(second.url, "/status")
    assert (status["round"], status["phase"]) == (1, "training")
    assert status["received_from"] == ["c0", "c1"]
    assert status["registered_clients"] == 4
    again = post_update(second.url, updates["c1"])
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    for client_id in ("c2", "c3"):
        assert post_update(second.url, updates[client_id]).status_code == 200
    wait_until(second.url, lambda s: s["phase"] == "finished", timeout=30)

    _, final = fetch_global(second.url)
    assert_model_equals(final, weighted_mean(updates.values()))
    (row,) = get_json(second.url, "/history")
    assert row["participants"] == clients
    assert row["num_examples"] == 5 + 8 + 11 + 14


def test_sigkill_during_concurrent_posts_counts_each_update_once(
    procs: Processes, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    clients = [f"c{k}" for k in range(8)]
    first = procs.aggregator(state_dir, *one_round_of(8))
    register_all(first.url, clients)
    wait_until(first.url, lambda s: s["phase"] == "training", timeout=20)
    _, start = fetch_global(first.url)
    updates = known_updates(start, clients, server_round=1)

    acknowledged = post_all_and_kill(updates, first.url, kill=first.kill)
    second = procs.aggregator(state_dir, *one_round_of(8), name="aggregator-restarted")
    status = get_json(second.url, "/status")
    assert set(acknowledged) <= set(status["received_from"])  # nothing acknowledged is lost

    # Every client re-sends, as a worker does after a connection error.
    for client_id in clients:
        reply = post_update(second.url, updates[client_id])
        assert reply.status_code == 200, reply.text
        if client_id in acknowledged:
            assert reply.json()["duplicate"] is True, client_id
    wait_until(second.url, lambda s: s["phase"] == "finished", timeout=30)

    _, final = fetch_global(second.url)
    assert_model_equals(final, weighted_mean(updates.values()))
    (row,) = get_json(second.url, "/history")
    assert row["participants"] == clients
    assert row["num_examples"] == sum(u.num_examples for u in updates.values())
    print(
        f"{len(acknowledged)} of {len(clients)} updates acknowledged before the SIGKILL, "
        f"{status['received']} found in the journal after the restart"
    )


def post_all_and_kill(
    updates: dict[str, KnownUpdate], url: str, *, kill: Callable[[], None]
) -> list[str]:
    """Post every update at once; SIGKILL the aggregator after the first acknowledgement.

    Return the clients whose update was acknowledged (answered 200) before the kill.
    """
    first_ack = threading.Event()
    acknowledged: list[str] = []

    def send(update: KnownUpdate) -> None:
        try:
            reply = post_update(url, update, timeout=10)
        except httpx.TransportError:
            return
        if reply.status_code == 200:
            acknowledged.append(update.client_id)
            first_ack.set()

    with ThreadPoolExecutor(len(updates)) as pool:
        futures = [pool.submit(send, update) for update in updates.values()]
        assert first_ack.wait(30), "no update was acknowledged"
        kill()
        for future in futures:
            future.result()
    return sorted(acknowledged)
