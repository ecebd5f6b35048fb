"""End to end: a short DP-SGD federation (configs/dp-sgd.yaml) with real processes.

Three mnist5k clients as virtual clients of one worker process, so a run is mostly the
processes starting. Each client's epsilon in /history (the rows of metrics.json) is checked
against Opacus's RDP analysis for its own steps and sample rate; a second run gives the
clients a budget that two rounds fit and three do not.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp

from tests.shared.runs.test_e2e import REPO, TIMEOUT_S, only_run_dir, processes_mentioning

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc"),
]

CONFIG = REPO / "configs" / "dp-sgd.yaml"
SIGMA, DELTA, BATCH, EPOCHS = 1.0, 1e-5, 32, 2  # configs/dp-sgd.yaml


def _epsilon(num_examples: int, rounds: int) -> float:
    """A client's epsilon after `rounds` rounds, from the RDP analysis (not its accountant)."""
    steps = math.ceil(num_examples / BATCH) * EPOCHS * rounds
    orders = RDPAccountant.DEFAULT_ALPHAS
    curve = rdp.compute_rdp(
        q=BATCH / num_examples, noise_multiplier=SIGMA, steps=steps, orders=orders
    )
    epsilon, _ = rdp.get_privacy_spent(orders=orders, rdp=curve, delta=DELTA)
    return float(epsilon)


def _run(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    argv = [sys.executable, "-m", "shared.runs", "--config", str(CONFIG), "--clients", "3"]
    argv += ["--worker-processes", "1", "--no-live", "--runs-dir", str(tmp_path / "runs")]
    done = subprocess.run(
        [*argv, *flags], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    run_dir = only_run_dir(tmp_path / "runs")
    assert processes_mentioning(str(run_dir)) == []  # every process is gone
    return done, run_dir


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    return rows


def test_clients_report_their_epsilon_and_stop_contributing_at_their_budget(
    tmp_path: Path,
) -> None:
    n = 4000 // 3  # the smallest of the three IID partitions (1333, 1333, 1334)
    target = (_epsilon(n + 1, 2) + _epsilon(n, 3)) / 2  # two rounds fit, three do not
    done, run_dir = _run(tmp_path, "--rounds", "4", "--set", f"dp_sgd.target_epsilon={target}")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = _rounds(run_dir)
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        clients = row["clients"]
        assert sorted(clients) == ["0", "1", "2"]
        expected = {c: _epsilon(m["num_examples"], row["round"]) for c, m in clients.items()}
        for client, measured in clients.items():
            assert measured["dp_epsilon"] == pytest.approx(expected[client], rel=1e-9)
            assert measured["dp_delta"] == DELTA
            assert "train_loss" not in measured
        assert row["dp_sgd_epsilon_max"] == pytest.approx(max(expected.values()), rel=1e-9)
    assert rows[1]["dp_sgd_epsilon_max"] > rows[0]["dp_sgd_epsilon_max"]
    # it learns (chance: 0.1); the noise is the clients' own draw, so not a fixed figure
    assert rows[1]["eval_accuracy"] > 0.25
    for client in ("0", "1", "2"):
        assert (run_dir / "worker-state" / client / "dp_sgd_accountant.npz").is_file()
    assert (
        "every worker exited before the run finished: 3 DP-SGD clients spent their privacy "
        "budget and stopped contributing"
    ) in done.stdout
    assert "DP-SGD epsilon per client (delta 1e-05), after its last round" in done.stdout
    log = (run_dir / "logs" / "worker-0-2.log").read_text()
    assert log.count("round 3: privacy budget spent, the client stops contributing") == 3
    assert "client 0 budget_spent" in log
