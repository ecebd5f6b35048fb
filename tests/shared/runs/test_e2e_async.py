"""`configs/async.yaml` end to end: real processes make versions from buffers, the slowed
clients contribute stale updates less often, and the run folder has the timeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.runs.timeline import read_timeline_totals
from tests.shared.runs.test_e2e import REPO, TIMEOUT_S, only_run_dir, processes_mentioning

pytestmark = pytest.mark.slow

SLOW = {"7", "8", "9"}  # `slowdown: 5.0` in configs/async.yaml


def test_async_config_makes_versions_with_stragglers(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "shared.runs", "--config", str(REPO / "configs" / "async.yaml")]
    argv += ["--rounds", "8", "--worker-processes", "2", "--no-live"]
    argv += ["--runs-dir", str(tmp_path / "runs")]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert processes_mentioning(str(run_dir)) == []

    rows = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    assert [row["version"] for row in rows] == list(range(1, 9))
    assert all(len(row["participants"]) >= 3 for row in rows)  # buffer_size 3
    ages = [int(age) for row in rows for age in row["staleness"]["counts"]]
    assert max(ages) <= 10  # max_staleness
    assert rows[-1]["eval_accuracy"] > 0.8

    for name in ("timeline.png", "timeline.csv"):
        assert (run_dir / name).is_file(), name
    totals = {t.client_id: t for t in read_timeline_totals(run_dir)}
    assert set(totals) == {str(k) for k in range(10)}
    fast = [t.updates for cid, t in totals.items() if cid not in SLOW]
    slow = [t.updates for cid, t in totals.items() if cid in SLOW]
    assert sum(fast) / len(fast) > sum(slow) / len(slow)
    assert f"final accuracy {rows[-1]['eval_accuracy']:.4f} after round 8" in done.stdout
