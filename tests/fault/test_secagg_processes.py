"""Secure aggregation over real processes on loopback: a worker killed mid-protocol.

One aggregator and four clients on mnist5k with the 2NN. Client 0, alone in its process,
trains on the whole training split for many epochs, so it has advertised its keys and
sent its shares but is still training when the others have posted their masked vectors:
it is killed then (SIGKILL, by PID). The masked stage closes at its deadline, the three
survivors reveal their shares of client 0's mask key, the aggregator removes its masks
and the round closes on the survivors' sum; the run goes on and finishes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fault.procs import Processes, cpu_seconds, get_json, wait_healthy, wait_until

pytestmark = pytest.mark.slow

ROUND_TIMEOUT_S = 15.0  # the masked stage's deadline: the victim's dropout is seen then
SERVER = (
    "model=mlp",
    "dataset=mnist5k",
    "server_eval=true",
    "fraction_fit=1.0",
    "num_rounds=2",
    "min_fit_clients=3",
    "min_available_clients=4",
    f"round_timeout_s={ROUND_TIMEOUT_S}",
    "secagg.enabled=true",
    "secagg.stage_timeout_s=20",
)
SURVIVORS = ["1", "2", "3"]


def test_worker_killed_after_sharing_is_dropped_and_the_sum_goes_on(
    procs: Processes, tmp_path: Path
) -> None:
    started = time.monotonic()
    aggregator = procs.aggregator(tmp_path / "state", *SERVER, "local_epochs=40", wait=False)
    url = aggregator.url
    survivors = procs.virtual_workers(url, "1-3", num_partitions=16, name="workers-1-3")
    victim = procs.worker(url, "0", partition_id=0, num_partitions=1, name="worker-0")
    wait_healthy(aggregator)
    status = wait_until(
        url, lambda s: len(s["received_from"]) >= 3, timeout=120, describe=procs.logs
    )
    assert (status["round"], status["received_from"]) == (1, SURVIVORS), procs.logs()

    before = cpu_seconds(victim.pid)
    time.sleep(0.5)
    assert cpu_seconds(victim.pid) - before > 0.2, "the victim is not training"
    victim.kill()

    wait_until(url, lambda s: s["round"] == 2, timeout=ROUND_TIMEOUT_S + 30, describe=procs.logs)
    (first,) = get_json(url, "/history")
    assert first["participants"] == SURVIVORS, procs.logs()
    assert first["attempts"] == 1
    assert first["eval_accuracy"] > 0.5  # the survivors' mean, unmasked: a trained model

    restarted = procs.worker(url, "0", partition_id=0, num_partitions=16, name="worker-0-again")
    wait_until(url, lambda s: s["phase"] == "finished", timeout=90, describe=procs.logs)
    second = get_json(url, "/history")[1]
    assert set(SURVIVORS) <= set(second["participants"]), procs.logs()
    assert second["eval_accuracy"] >= first["eval_accuracy"] - 0.02
    for proc in [survivors, restarted]:
        assert proc.wait(30) == 0, procs.logs()
    log = aggregator.log(100_000)
    assert "Traceback" not in log, log
    assert time.monotonic() - started < 240
