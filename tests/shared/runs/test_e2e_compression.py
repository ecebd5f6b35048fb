"""End to end with compression: configs/compression.yaml through `python -m shared.runs`.

Three clients, two rounds of real processes: the workers send top-k deltas with 8-bit
values (stochastically rounded here) and keep their error-feedback residuals in the run's
worker-state folder, and get the global model as q8 steps against the one they hold; the
aggregator's /history rows, and so metrics.json and metrics.csv, count the bytes saved
both ways; a rerun as virtual clients of one process gives the same models. The updates
are deltas against the model each worker holds, added by the aggregator to its own: any
worker off the chain would change the models, and the rerun, whose clients share one
download, would differ.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client_worker.compress import FEEDBACK_FILE
from shared.compression import ErrorFeedback

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "compression.yaml"
STOCHASTIC = "compression={encoding: topk, fraction: 0.1, values: q8, rounding: stochastic}"
TIMEOUT_S = 180.0


def run(tmp_path: Path, name: str, *flags: str) -> tuple[Path, str]:
    """Run the 3-client, 2-round federation; return its run folder and what it printed."""
    argv = [sys.executable, "-m", "shared.runs", "--config", str(CONFIG), "--no-live"]
    argv += ["--clients", "3", "--rounds", "2", "--runs-dir", str(tmp_path / name)]
    argv += ["--set", STOCHASTIC, *flags]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (tmp_path / name).iterdir()
    return run_dir, done.stdout


def test_a_compressed_federation_saves_uplink_bytes_and_reruns_bit_identical(
    tmp_path: Path,
) -> None:
    run_dir, printed = run(tmp_path, "processes")
    document = json.loads((run_dir / "metrics.json").read_text())
    rounds = document["rounds"]
    assert [row["round"] for row in rounds] == [1, 2]
    assert all(row["participants"] == ["0", "1", "2"] for row in rounds)
    assert rounds[-1]["eval_accuracy"] > 0.6
    for row in rounds:
        # top-k 10% of the large tensors, 8-bit values with varint gaps: over 10x smaller
        assert row["raw_bytes_in"] > 10 * row["bytes_in"], row
        assert row["compression_in"] == pytest.approx(row["raw_bytes_in"] / row["bytes_in"], 1e-3)
    for row in rounds[1:]:  # after round 1 the workers get q8 steps against their model
        assert row["raw_bytes_out"] > 3 * row["bytes_out"], row
    summary = document["summary"]
    assert summary["compression_in"] > 10
    assert summary["compression_out"] > 2
    assert summary["total_raw_mb_in"] > 10 * summary["total_mb_in"]
    with (run_dir / "metrics.csv").open() as file:
        assert float(next(csv.DictReader(file))["compression_in"]) > 10
    assert "x smaller" in printed

    for client_id in ("0", "1", "2"):
        path = run_dir / "worker-state" / client_id / FEEDBACK_FILE
        residuals = ErrorFeedback.load(path).residuals
        assert set(residuals) == {"1.weight", "3.weight", "5.weight"}  # not the biases
        assert all(np.abs(r).max() > 0 for r in residuals.values())

    virtual_dir, _ = run(tmp_path, "virtual", "--worker-processes", "1")
    again = json.loads((virtual_dir / "metrics.json").read_text())["rounds"]
    assert [row["model_sha256"] for row in again] == [row["model_sha256"] for row in rounds]
