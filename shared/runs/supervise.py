"""Running the fleet: start the aggregator and workers, watch them until the run ends, stop them."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.runs.launch import LOOPBACK, Child, Fleet, StopSignals, fetch_json, wait_healthy
from shared.runs.layout import WorkerProcess, aggregator_argv, child_env
from shared.runs.progress import LinePrinter, LiveView

__all__ = [
    "Outcome",
    "View",
    "describe_exit",
    "finished_message",
    "interrupted",
    "launch",
    "supervise",
    "wind_down",
    "workers_gone_message",
]

POLL_S = 0.5  # display refresh; workers use the aggregator's long poll, not this
HEALTH_TIMEOUT_S = 120.0  # importing torch in 11 processes on 2 cores takes a while
WORKER_EXIT_TIMEOUT_S = 30.0  # after "finished": workers see it on their next poll and exit
# what a worker logs when a DP-SGD client declines a round past its target_epsilon
BUDGET_SPENT = "privacy budget spent"
BUDGET_SCAN_LINES = 200  # of each worker's log: one line per virtual client and round
View = LiveView | LinePrinter


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the exit code and one message for the user."""

    code: int
    message: str


def launch(
    fleet: Fleet,
    config_path: Path,
    run_dir: Path,
    layout: list[WorkerProcess],
    *,
    port: int,
    stop: StopSignals,
) -> tuple[Child, list[Child], str]:
    """Start the aggregator, wait until it is healthy, then start the worker processes."""
    url = f"http://{LOOPBACK}:{port}"
    aggregator = fleet.start(
        "aggregator",
        aggregator_argv(config_path, port=port, state_dir=run_dir / "state"),
        log_path=run_dir / "logs" / "aggregator.log",
        env=child_env(worker=False),
    )
    wait_healthy(url, child=aggregator, timeout_s=HEALTH_TIMEOUT_S, stop=stop.event)
    workers = [
        fleet.start(
            worker.name,
            worker.argv,
            log_path=run_dir / "logs" / f"{worker.name}.log",
            # client algorithms' state (personalized layers, ...) stays in the run folder
            env={
                **child_env(worker=True),
                "TRIBUTARY_WORKER_STATE_DIR": str(run_dir / "worker-state"),
            },
        )
        for worker in layout
    ]
    return aggregator, workers, url


def describe_exit(child: Child) -> str:
    """Return which child exited, how, and the tail of its log."""
    code = child.poll()
    how = f"code {code}"
    if code is not None and code < 0:
        how = f"signal {signal.Signals(-code).name}"
    tail = child.log_tail(15) or "(empty)"
    return f"{child.name} (pid {child.pid}) exited with {how}; end of {child.log_path}:\n{tail}"


def _history_changed(status: Any, history: list[dict[str, Any]]) -> bool:
    """Tell whether /status names a last round that `history` does not end with."""
    if not isinstance(status, dict):
        return False
    last_round = (status.get("last_round") or {}).get("round")
    return last_round != (history[-1]["round"] if history else None)


def _finished(status: Any, history: list[dict[str, Any]]) -> bool:
    """Tell whether the aggregator finished and `history` holds its last round.

    A run stopped early (by its privacy budget, or the admin) finishes at the round it
    reached, not at num_rounds: /status then names that round.
    """
    return (
        isinstance(status, dict)
        and status.get("phase") == "finished"
        and (history[-1]["round"] if history else 0) >= status["round"]
    )


def finished_message(status: Any) -> str:
    """Return how a finished run ended: normally, or stopped by its privacy budget."""
    privacy = status.get("privacy") if isinstance(status, dict) else None
    stop = (privacy or {}).get("budget_stop")
    if isinstance(stop, dict) and stop.get("message"):
        return f"the run finished early: {stop['message']}"
    return "the run finished"


def supervise(
    fleet: Fleet,
    aggregator: Child,
    workers: list[Child],
    *,
    url: str,
    view: View,
    stop: StopSignals,
) -> tuple[Outcome, list[dict[str, Any]]]:
    """Poll and display until the run finished, a process died, or a stop was asked."""
    started = time.monotonic()
    history: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=httpx.Timeout(5.0, connect=2.0)) as client:
        while True:
            # Exits are checked before the status is read: a worker only exits 0 after the
            # aggregator said "finished", so a status read afterwards already says so too.
            dead = fleet.failed(must_run=lambda child: child is aggregator)
            workers_gone = all(worker.poll() is not None for worker in workers)
            status = fetch_json(client, "/status")
            if _history_changed(status, history):
                rows = fetch_json(client, "/history")
                history = rows if isinstance(rows, list) else history
            view.update(status, history, elapsed_s=time.monotonic() - started)
            if _finished(status, history):
                return Outcome(0, finished_message(status)), history
            if dead is not None:
                return Outcome(1, describe_exit(dead)), history
            if workers_gone:
                return Outcome(1, workers_gone_message(workers)), history
            if stop.event.wait(POLL_S):
                return interrupted(stop), history


def workers_gone_message(workers: list[Child]) -> str:
    """Say that every worker exited early, and why when DP-SGD budgets stopped their clients."""
    message = "every worker exited before the run finished"
    reasons = [
        line
        for worker in workers
        for line in worker.log_tail(BUDGET_SCAN_LINES).splitlines()
        if BUDGET_SPENT in line
    ]
    if not reasons:
        return message
    example = reasons[-1].split(": ", 1)[-1]  # without the log record's time and logger
    return (
        f"{message}: {len(reasons)} DP-SGD clients spent their privacy budget and stopped "
        f"contributing (dp_sgd.target_epsilon; fewer rounds, more noise or a larger "
        f"budget let the run finish), e.g. {example}"
    )


def interrupted(stop: StopSignals) -> Outcome:
    """Return the outcome of a run stopped by SIGINT or SIGTERM: exit code 128 + signal."""
    signum = signal.Signals(stop.signum or signal.SIGINT)
    return Outcome(128 + signum.value, f"interrupted by {signum.name}")


def wind_down(fleet: Fleet, workers: list[Child], view: View) -> None:
    """After "finished": let the workers exit on their own (bounded), then stop everything."""
    if not fleet.wait(workers, timeout_s=WORKER_EXIT_TIMEOUT_S):
        left = ", ".join(w.name for w in workers if w.poll() is None)
        view.note(f"still running {WORKER_EXIT_TIMEOUT_S:.0f} s after the end, stopped: {left}")
    for worker in workers:
        if worker.poll():
            view.note(f"warning: {describe_exit(worker)}")
    fleet.stop()
