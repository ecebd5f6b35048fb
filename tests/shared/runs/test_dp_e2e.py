"""End to end: a DP-FedAvg federation of real processes on loopback runs into its budget.

configs/dp-fedavg.yaml shrunk to ten clients of which each round samples five, with a
target_epsilon between the epsilon after two rounds and after three: the run must stop
after round 2, with the budget's message, though num_rounds asks for ten. Once with an
aggregator and one worker process read over HTTP (/history and /status), once through the
local runner (its exit code, what it prints, the run folder).
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.privacy.accounting import RoundSampling, planned_epsilon
from tests.fault.procs import Processes
from tests.shared.runs.scenario_helpers import CONFIGS, run_scenario
from tests.shared.runs.test_e2e import only_run_dir, processes_mentioning

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
CONFIG = CONFIGS / "dp-fedavg.yaml"
TIMEOUT_S = 180.0  # a bound, not the expected time (about half a minute)
STOPPED_CLEANLY = (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its shutdown
Z, DELTA, N, M = 2.0, 1e-5, 10, 5
EPSILON = [
    planned_epsilon(k, RoundSampling(N, M), noise_multiplier=Z, delta=DELTA) for k in (1, 2, 3)
]
TARGET = round((EPSILON[1] + EPSILON[2]) / 2, 3)  # two rounds fit, a third would not
OVERRIDES = (
    f"num_partitions={N}",
    f"min_available_clients={N}",
    f"min_fit_clients={M}",
    "fraction_fit=0.5",
    "num_rounds=10",
    f"strategy.noise_multiplier={Z}",
    f"strategy.target_epsilon={TARGET}",
    "strategy.noise_seed=3",
)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Processes logging to tmp_path; every survivor is stopped at teardown."""
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def budget_message(done: int) -> str:
    """The message of a stop before round done + 1 (aggregator_service/federation/privacy.py)."""
    return (
        f"privacy budget: epsilon would reach {EPSILON[done]:.4g} after round {done + 1}, "
        f"above target_epsilon {TARGET:g}; the run finishes after round {done} at epsilon "
        f"{EPSILON[done - 1]:.4g}"
    )


def test_epsilon_is_in_history_and_status_and_the_budget_stops_the_run(
    procs: Processes, tmp_path: Path
) -> None:
    outcome = run_scenario(
        procs, CONFIG, OVERRIDES, state_dir=tmp_path / "state", timeout_s=TIMEOUT_S
    )
    assert outcome.worker_code == 0, outcome.logs
    assert outcome.aggregator_code in STOPPED_CLEANLY, outcome.logs

    rows = outcome.history
    assert [row["round"] for row in rows] == [1, 2]  # of num_rounds 10
    assert [row["epsilon"] for row in rows] == pytest.approx(EPSILON[:2], rel=1e-9)
    assert all(row["delta"] == DELTA for row in rows)
    assert all(row["dp_sampling"] == {"population": N, "sample_size": M} for row in rows)
    assert all(len(row["participants"]) == M for row in rows)
    assert outcome.stored_history == rows

    status = outcome.status
    assert (status["phase"], status["round"]) == ("finished", 2)
    privacy = status["privacy"]
    assert privacy["epsilon"] == pytest.approx(EPSILON[1], rel=1e-9)
    assert (privacy["delta"], privacy["target_epsilon"]) == (DELTA, TARGET)
    assert (privacy["accountant"], privacy["noise_multiplier"]) == ("rdp", Z)
    assert privacy["clip_norm"] == 0.5
    assert privacy["rounds_accounted"] == 2
    stop = privacy["budget_stop"]
    assert (stop["reason"], stop["round"]) == ("privacy budget", 2)
    assert stop["message"] == budget_message(2)
    aggregator_log = procs.started[0].log_path.read_text()
    assert budget_message(2) in aggregator_log


@pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc")
def test_the_runner_ends_cleanly_at_the_budget_and_reports_epsilon(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "shared.runs", "--config", str(CONFIG), "--no-live"]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--worker-processes", "1"]
    argv += [item for override in OVERRIDES for item in ("--set", override)]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert processes_mentioning(str(run_dir)) == []

    assert f"the run finished early: {budget_message(2)}" in done.stdout
    assert f"privacy: epsilon {EPSILON[1]:.4g} at delta 1e-05 after round 2" in done.stdout
    assert f"epsilon {EPSILON[0]:.4g}" in done.stdout  # the line of round 1

    document = json.loads((run_dir / "metrics.json").read_text())
    assert document["summary"]["status"] == "finished"
    assert document["summary"]["final_epsilon"] == pytest.approx(EPSILON[1], rel=1e-9)
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["round"] for row in rows] == ["1", "2"]
    assert [float(row["epsilon"]) for row in rows] == pytest.approx(EPSILON[:2], rel=1e-9)
