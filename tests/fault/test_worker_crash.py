"""Workers that die or straggle: the round closes at its deadline with the others, and a
restarted worker with the same id takes part again.

Real processes on mnist5k with the 2NN: one aggregator, the worker to kill (client 0) in
its own `python -m client_worker` process, and clients 1-3 as virtual clients of a second
worker process (one process starts faster than three on a busy machine). Client 0 trains
on a partition 16 times larger than the others' (4000 examples instead of 250), so it is
still training when the others have posted: it is killed mid-training, and the test
checks that it was busy then (its CPU time grows).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fault.procs import (
    Proc,
    Processes,
    cpu_seconds,
    get_json,
    wait_healthy,
    wait_until,
)

pytestmark = pytest.mark.slow

# Round 2 must outlast the restart of a worker process (importing torch, loading mnist5k):
# seconds when the machine is idle, up to about 15 s when it is busy.
ROUND_TIMEOUT_S = 20.0
SERVER = ("model=mlp", "dataset=mnist5k", "server_eval=false", "fraction_fit=1.0")
SURVIVORS = ["1", "2", "3"]
VICTIM = "0"


def start_victim(procs: Processes, url: str, name: str, num_partitions: int = 1) -> Proc:
    """Start client 0, by default on the whole training split (one partition)."""
    return procs.worker(url, VICTIM, partition_id=0, num_partitions=num_partitions, name=name)


def start_survivors(procs: Processes, url: str) -> Proc:
    """Start clients 1-3 in one process, each on 250 examples (one of 16 partitions)."""
    return procs.virtual_workers(url, "1-3", num_partitions=16, name="workers-1-3")


def test_worker_killed_mid_training_then_rejoins(procs: Processes, tmp_path: Path) -> None:
    overrides: tuple[str, ...] = (
        *SERVER,
        "num_rounds=2",
        "min_fit_clients=3",
        "min_available_clients=4",
    )
    overrides += ("local_epochs=40", f"round_timeout_s={ROUND_TIMEOUT_S}")
    aggregator = procs.aggregator(tmp_path / "state", *overrides, wait=False)
    url = aggregator.url
    survivors = start_survivors(procs, url)  # they retry until the aggregator is up
    victim = start_victim(procs, url, "worker-0")
    wait_healthy(aggregator)
    wait_until(url, lambda s: s["phase"] == "training", timeout=90, describe=procs.logs)
    status = wait_until(url, lambda s: s["received"] >= 3, timeout=30, describe=procs.logs)
    assert status["received_from"] == SURVIVORS, procs.logs()
    assert status["round"] == 1

    before = cpu_seconds(victim.pid)
    time.sleep(0.5)
    assert cpu_seconds(victim.pid) - before > 0.2, "the victim is not training"
    victim.kill()
    assert VICTIM not in get_json(url, "/status")["received_from"]

    wait_until(url, lambda s: s["round"] == 2, timeout=ROUND_TIMEOUT_S + 15, describe=procs.logs)
    (first,) = get_json(url, "/history")
    assert first["participants"] == SURVIVORS
    assert first["attempts"] == 1
    assert first["duration_s"] >= ROUND_TIMEOUT_S - 0.5  # closed by the deadline

    # Same id; a small partition this time, so that it is up and done within the deadline.
    restarted = start_victim(procs, url, "worker-0-restarted", num_partitions=16)
    wait_until(url, lambda s: s["phase"] == "finished", timeout=60, describe=procs.logs)
    second = get_json(url, "/history")[1]
    assert second["participants"] == [VICTIM, *SURVIVORS]
    assert second["attempts"] == 1
    assert second["num_examples"] == 4 * 250
    for proc in [survivors, restarted]:
        assert proc.wait(30) == 0, procs.logs()


def test_straggler_of_the_last_round_exits_cleanly(procs: Processes, tmp_path: Path) -> None:
    """A worker whose update arrives after the last round closed drops it and exits 0."""
    # The straggler trains 100,000 examples (seconds), the others 6,250 each.
    overrides: tuple[str, ...] = (
        *SERVER,
        "num_rounds=1",
        "min_fit_clients=3",
        "min_available_clients=4",
    )
    overrides += ("local_epochs=25", "round_timeout_s=1.5")
    aggregator = procs.aggregator(tmp_path / "state", *overrides, wait=False)
    url = aggregator.url
    fast = start_survivors(procs, url)
    straggler = start_victim(procs, url, "worker-0")
    wait_healthy(aggregator)
    wait_until(url, lambda s: s["phase"] == "finished", timeout=90, describe=procs.logs)
    (row,) = get_json(url, "/history")
    assert row["participants"] == SURVIVORS
    assert fast.wait(30) == 0, procs.logs()
    assert straggler.wait(60) == 0, straggler.log()
