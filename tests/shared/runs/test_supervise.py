"""Supervision of a run's processes: when the runner stops watching them, and why.

Supervision runs against a stand-in aggregator (fake_aggregator.py) and tiny stand-in
workers, so these tests need neither torch nor the real services.
"""

from __future__ import annotations

import io
import json
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shared.runs.launch import Child, Fleet, StopSignals, free_port, wait_healthy
from shared.runs.progress import LinePrinter
from shared.runs.supervise import interrupted, supervise

FAKE_AGGREGATOR = Path(__file__).with_name("fake_aggregator.py")


def history_row(server_round: int) -> dict[str, Any]:
    return {
        "round": server_round,
        "participants": ["0", "1"],
        "num_examples": 100,
        "train_loss": 1.0 / server_round,
        "eval_loss": 0.5,
        "eval_accuracy": 0.5 + server_round / 10,
        "bytes_in": 1000,
        "bytes_out": 2000,
        "duration_s": 0.5,
    }


def aggregator_state(phase: str, rounds_done: int, num_rounds: int = 2) -> dict[str, Any]:
    history = [history_row(r) for r in range(1, rounds_done + 1)]
    status = {
        "round": min(rounds_done + 1, num_rounds),
        "num_rounds": num_rounds,
        "phase": phase,
        "received": 0,
        "needed": 2,
        "registered_clients": 2,
        "last_round": history[-1] if history else None,
    }
    return {"status": status, "history": history}


class Setup:
    """A stand-in aggregator, a line view writing to a string, and a Fleet."""

    def __init__(self, tmp_path: Path, fleet: Fleet) -> None:
        self.tmp_path = tmp_path
        self.fleet = fleet
        self.state = tmp_path / "state.json"
        self.output = io.StringIO()
        self.view = LinePrinter(Console(file=self.output, width=200, color_system=None))
        self.stop = StopSignals()
        self.url = ""

    def set_state(self, state: dict[str, Any]) -> None:
        self.state.write_text(json.dumps(state))

    def start_aggregator(self) -> Child:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, str(FAKE_AGGREGATOR), str(port), str(self.state)]
        child = self.fleet.start("aggregator", argv, log_path=self.tmp_path / "agg.log")
        wait_healthy(self.url, child=child, timeout_s=20)
        return child

    def start_worker(self, k: int, code: str = "import time; time.sleep(60)") -> Child:
        argv = [sys.executable, "-c", code]
        return self.fleet.start(f"worker-{k}", argv, log_path=self.tmp_path / f"w{k}.log")

    def supervise(self, aggregator: Child, workers: list[Child]) -> Any:
        return supervise(
            self.fleet, aggregator, workers, url=self.url, view=self.view, stop=self.stop
        )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with Fleet(grace_s=2.0) as fleet:
        yield Setup(tmp_path, fleet)


def test_supervise_returns_when_the_run_finished(setup: Setup) -> None:
    setup.set_state(aggregator_state("finished", 2))
    aggregator = setup.start_aggregator()
    outcome, history = setup.supervise(aggregator, [setup.start_worker(0)])
    assert outcome.code == 0
    assert [row["round"] for row in history] == [1, 2]
    lines = setup.output.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["round 1/2", "round 2/2"]


def test_a_run_stopped_by_its_privacy_budget_finishes_before_num_rounds(setup: Setup) -> None:
    state = aggregator_state("finished", 2, num_rounds=5)
    message = "privacy budget: epsilon would reach 9.1 after round 3, above target_epsilon 8"
    privacy = {"epsilon": 7.5, "budget_stop": {"reason": "privacy budget", "message": message}}
    state["status"] |= {"round": 2, "privacy": privacy}
    setup.set_state(state)
    aggregator = setup.start_aggregator()
    outcome, history = setup.supervise(aggregator, [setup.start_worker(0)])
    assert outcome.code == 0
    assert outcome.message == f"the run finished early: {message}"
    assert [row["round"] for row in history] == [1, 2]


def test_supervise_reports_a_worker_that_died(setup: Setup) -> None:
    setup.set_state(aggregator_state("training", 1))
    aggregator = setup.start_aggregator()
    code = "import sys; print('dataset file missing', flush=True); sys.exit(3)"
    workers = [setup.start_worker(0), setup.start_worker(1, code)]
    outcome, history = setup.supervise(aggregator, workers)
    assert outcome.code == 1
    assert re.search(r"worker-1 \(pid \d+\) exited with code 3", outcome.message)
    assert "dataset file missing" in outcome.message
    assert len(history) == 1


def test_supervise_reports_an_aggregator_that_exited(setup: Setup) -> None:
    setup.set_state(aggregator_state("training", 0))
    aggregator = setup.start_aggregator()
    worker = setup.start_worker(0)
    aggregator.process.send_signal(signal.SIGTERM)
    outcome, _ = setup.supervise(aggregator, [worker])
    assert outcome.code == 1
    assert "aggregator" in outcome.message
    assert "signal SIGTERM" in outcome.message


def test_supervise_notices_that_every_worker_left(setup: Setup) -> None:
    setup.set_state(aggregator_state("training", 1))
    aggregator = setup.start_aggregator()
    workers = [setup.start_worker(k, "pass") for k in range(2)]
    outcome, _ = setup.supervise(aggregator, workers)
    assert outcome.code == 1
    assert outcome.message == "every worker exited before the run finished"


def test_supervise_says_when_dp_sgd_budgets_stopped_the_workers(setup: Setup) -> None:
    setup.set_state(aggregator_state("training", 1))
    aggregator = setup.start_aggregator()
    line = (
        "2026-01-01 00:00:00,000 INFO client_worker.worker: client {k}: round 2: privacy "
        "budget spent, the client stops contributing: its 26 DP-SGD steps would take "
        "epsilon from 7.118 to 7.73, past target_epsilon 7.5 (delta 1e-05)"
    )
    workers = [setup.start_worker(k, f"print({line.format(k=k)!r})") for k in range(2)]
    outcome, _ = setup.supervise(aggregator, workers)
    assert outcome.code == 1
    assert outcome.message.startswith(
        "every worker exited before the run finished: 2 DP-SGD clients spent their privacy "
        "budget and stopped contributing (dp_sgd.target_epsilon;"
    )
    assert outcome.message.endswith(
        "e.g. client 1: round 2: privacy budget spent, the client stops contributing: its 26 "
        "DP-SGD steps would take epsilon from 7.118 to 7.73, past target_epsilon 7.5 "
        "(delta 1e-05)"
    )


def test_interrupted_exit_codes() -> None:
    stop = StopSignals()
    assert interrupted(stop).code == 130  # no signal recorded: as for Ctrl-C
    stop.signum = signal.SIGTERM
    assert interrupted(stop).code == 143
    assert interrupted(stop).message == "interrupted by SIGTERM"


def test_supervise_stops_on_a_signal(setup: Setup) -> None:
    setup.set_state(aggregator_state("training", 0))
    aggregator = setup.start_aggregator()
    setup.stop.signum = signal.SIGTERM
    setup.stop.event.set()
    outcome, history = setup.supervise(aggregator, [setup.start_worker(0)])
    assert outcome.code == 128 + signal.SIGTERM
    assert outcome.message == "interrupted by SIGTERM"
    assert history == []
