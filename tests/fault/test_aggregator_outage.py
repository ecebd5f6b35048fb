"""The aggregator goes away for a while: workers back off, stay alive, and resume by
themselves once it is back on the same state dir and port; the run finishes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.fault.procs import Proc, Processes, free_port, get_json, wait_healthy, wait_until

pytestmark = pytest.mark.slow

NUM_ROUNDS = 3
OUTAGE_S = 5.0
OVERRIDES = (
    "model=mlp",
    "dataset=mnist5k",
    "server_eval=false",
    f"num_rounds={NUM_ROUNDS}",
    "min_fit_clients=3",
    "min_available_clients=3",
    "local_epochs=20",  # about a second of training per round, so the run outlives the stop
    "round_timeout_s=60",
)


def test_workers_resume_after_an_outage(procs: Processes, tmp_path: Path) -> None:
    """SIGTERM (graceful, with long polls open); test_aggregator_crash covers SIGKILL."""
    state_dir = tmp_path / "state"
    port = free_port()
    first = procs.aggregator(state_dir, *OVERRIDES, port=port, wait=False)
    workers = [procs.worker(first.url, str(k), partition_id=k, num_partitions=4) for k in range(3)]
    wait_healthy(first)
    wait_until(first.url, lambda s: s["last_round"] is not None, timeout=90, describe=procs.logs)

    retries_before = [retries(worker) for worker in workers]
    first.process.send_signal(signal.SIGTERM)
    # With long polls open, it still ends in time; uvicorn re-raises the signal once it
    # has shut down, so the exit status is "terminated by SIGTERM".
    assert first.wait(20) == -signal.SIGTERM
    stopped_at = time.monotonic()
    time.sleep(OUTAGE_S)
    for worker, before in zip(workers, retries_before, strict=True):
        assert worker.alive(), worker.log()
        assert retries(worker) > before, worker.log()  # it noticed and is backing off
    restarted = procs.aggregator(state_dir, *OVERRIDES, port=port, name="aggregator-restarted")
    assert time.monotonic() - stopped_at >= OUTAGE_S

    for worker in workers:
        assert worker.wait(90) == 0, procs.logs()
    status = wait_until(restarted.url, lambda s: s["phase"] == "finished", timeout=10)
    assert status["round"] == NUM_ROUNDS
    history = get_json(restarted.url, "/history")
    assert [row["round"] for row in history] == list(range(1, NUM_ROUNDS + 1))
    for row in history:
        assert row["participants"] == ["0", "1", "2"], row
        assert row["num_examples"] == 3 * 1000, row  # three partitions of 4000 / 4


def retries(worker: Proc) -> int:
    """Count the retries a worker has logged so far."""
    return worker.log_path.read_text(errors="replace").count("; retry ")
