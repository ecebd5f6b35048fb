"""End to end: `python -m shared.runs` with a real aggregator and real workers.

Three clients on mnist5k with the 2NN, so a run takes seconds of training; most of the time
is the four processes starting (importing torch).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from shared.config import load_config
from shared.data import dataset_from_config
from shared.evaluation import evaluate
from shared.models import build_model, init_global_weights, load_numpy_state
from shared.runs.timeline import read_timeline_totals

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
RUNNER = [sys.executable, "-m", "shared.runs", "--config", str(REPO / "configs" / "demo.yaml")]
TIMEOUT_S = 180.0


def processes_mentioning(text: str) -> list[int]:
    """Return the PIDs whose command line contains `text` (the run folder is in each)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def only_run_dir(runs_dir: Path) -> Path:
    (run_dir,) = runs_dir.iterdir()
    return run_dir


def initial_accuracy(config_path: Path) -> float:
    """Evaluate the seeded initial global model, as the aggregator builds it."""
    config = load_config(config_path)
    weights = init_global_weights(config.model, seed=config.seed, **config.model_args())
    model = build_model(config.model, **config.model_args())
    load_numpy_state(model, weights)
    test = dataset_from_config(config).test
    return evaluate(model, test.images, test.labels).accuracy


@pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc")
def test_runner_finishes_a_small_federation(tmp_path: Path) -> None:
    argv = [*RUNNER, "--clients", "3", "--rounds", "2", "--no-live"]
    argv += ["--runs-dir", str(tmp_path / "runs")]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert processes_mentioning(str(run_dir)) == []

    for name in ["config.yaml", "metrics.csv", "metrics.json", "curves.png", "timeline.png"]:
        assert (run_dir / name).is_file(), name
    timeline = sorted(path.name for path in (run_dir / "timeline").iterdir())
    assert timeline == ["worker-0.jsonl", "worker-1.jsonl", "worker-2.jsonl"]
    totals = read_timeline_totals(run_dir)
    assert [client.client_id for client in totals] == ["0", "1", "2"]
    assert all(client.training_s > 0 and client.updates == 2 for client in totals)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    logs = sorted(path.name for path in (run_dir / "logs").iterdir())
    assert logs == ["aggregator.log", "worker-0.log", "worker-1.log", "worker-2.log"]

    document = json.loads((run_dir / "metrics.json").read_text())
    rounds = document["rounds"]
    assert [row["round"] for row in rounds] == [1, 2]
    assert all(row["participants"] == ["0", "1", "2"] for row in rounds)  # min_* capped to 3
    assert document["summary"]["status"] == "finished"
    final = rounds[-1]["eval_accuracy"]
    assert final > initial_accuracy(run_dir / "config.yaml") + 0.3
    assert f"final accuracy {final:.4f} after round 2" in done.stdout
    assert "MB in" in done.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc")
def test_runner_with_two_worker_processes_of_virtual_clients(tmp_path: Path) -> None:
    argv = [*RUNNER, "--clients", "4", "--rounds", "2", "--worker-processes", "2", "--no-live"]
    argv += ["--train-slots", "1", "--runs-dir", str(tmp_path / "runs")]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert processes_mentioning(str(run_dir)) == []
    assert "workers: 2 processes of virtual clients (0-1, 2-3)" in done.stdout

    logs = sorted(path.name for path in (run_dir / "logs").iterdir())
    assert logs == ["aggregator.log", "worker-0-1.log", "worker-2-3.log"]
    second = (run_dir / "logs" / "worker-2-3.log").read_text()
    assert "client 2 finished" in second
    assert "client 3 finished" in second

    document = json.loads((run_dir / "metrics.json").read_text())
    rounds = document["rounds"]
    assert [row["round"] for row in rounds] == [1, 2]
    assert all(row["participants"] == ["0", "1", "2", "3"] for row in rounds)
    assert document["summary"]["status"] == "finished"
    for row in rounds:
        for metrics in row["clients"].values():
            assert 0 < metrics["train_cpu_seconds"] <= metrics["train_seconds"] + 0.01


@pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc")
def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    argv = [*RUNNER, "--clients", "3", "--rounds", "50", "--no-live"]
    argv += ["--runs-dir", str(tmp_path / "runs")]
    runner = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and len(children) < 4:  # aggregator + 3 workers
            time.sleep(0.2)
            if (tmp_path / "runs").is_dir() and any((tmp_path / "runs").iterdir()):
                children = processes_mentioning(str(only_run_dir(tmp_path / "runs")))
        assert len(children) == 4
        runner.send_signal(signal.SIGINT)
        output, _ = runner.communicate(timeout=60)
        assert runner.returncode == 128 + signal.SIGINT, output
        assert "interrupted by SIGINT" in output
        assert not [pid for pid in children if alive(pid)]
        summary = json.loads((only_run_dir(tmp_path / "runs") / "metrics.json").read_text())
        assert summary["summary"]["status"] == "stopped"
    finally:
        for pid in [*children, runner.pid]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        runner.wait(timeout=10)


def _model_hashes(tmp_path: Path, name: str, *flags: str) -> list[str]:
    """Run a 3-client, 3-round federation; return each round's model sha256 from metrics.json."""
    runs_dir = tmp_path / name
    argv = [*RUNNER, "--clients", "3", "--rounds", "3", "--no-live", "--runs-dir", str(runs_dir)]
    done = subprocess.run(
        [*argv, *flags], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads((only_run_dir(runs_dir) / "metrics.json").read_text())["rounds"]
    return [row["model_sha256"] for row in rows]


@pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc")
def test_reruns_give_bit_identical_models_under_different_jitter(tmp_path: Path) -> None:
    calm = _model_hashes(tmp_path, "calm")
    # Exponential delays before every request reorder the uploads; one worker process
    # training the three clients one after the other changes the scheduling too.
    jitter = "network=[{clients: all, jitter: exponential, jitter_ms: 150}]"
    shaken = _model_hashes(tmp_path, "shaken", "--set", jitter, "--worker-processes", "1")
    assert len(calm) == 3
    assert len(set(calm)) == 3
    assert shaken == calm


# what each strategy keeps across rounds, in its checkpoints (the others keep nothing)
SERVER_STATE = {
    "fedavgm": {"velocity"},
    "fedadagrad": {"m", "v"},
    "fedadam": {"m", "v"},
    "fedyogi": {"m", "v"},
    "scaffold": {"control"},
}


@pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc")
# One of each kind, as real processes (every strategy runs rounds over HTTP, with a
# restart, in tests/aggregator_service/federation/test_reruns.py): server state
# (fedadam), a robust rule (krum), a client algorithm with groups (scaffold), FedProx's mu.
@pytest.mark.parametrize("strategy", ["fedprox", "scaffold", "fedadam", "krum"])
def test_strategies_run_a_federation_of_processes(tmp_path: Path, strategy: str) -> None:
    argv = [*RUNNER, "--clients", "3", "--rounds", "2", "--no-live", "--worker-processes", "1"]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--set", f"strategy={strategy}"]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    assert [row["round"] for row in rounds] == [1, 2]
    assert all(row["participants"] == ["0", "1", "2"] for row in rounds)
    assert rounds[-1]["eval_accuracy"] > initial_accuracy(run_dir / "config.yaml") + 0.2
    checkpoint = max((run_dir / "state" / "checkpoints").glob("round-*.safetensors"))
    saved = load_file(checkpoint)
    kinds = {name.split("/")[1] for name in saved if name.startswith("server_state/")}
    assert kinds == SERVER_STATE.get(strategy, set())  # server optimizers' state, SCAFFOLD's c
    own = sorted(path.name for path in (run_dir / "worker-state").glob("*/*.npz"))
    assert own == (["scaffold.npz"] * 3 if strategy == "scaffold" else [])  # and each c_i


@pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc")
def test_transfer_learning_from_a_pretrained_backbone_trains_and_sends_only_the_new_head(
    tmp_path: Path,
) -> None:
    backbone = tmp_path / "mlp-digits-0-4.pt"
    pretrain = [sys.executable, "-m", "client_worker.centralized", "--classes", "5"]
    pretrain += ["--epochs", "1", "--save", str(backbone)]
    done = subprocess.run(
        pretrain, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    argv = [*RUNNER, "--clients", "3", "--rounds", "2", "--no-live"]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--set", f"pretrained={backbone}"]
    argv += ["--set", 'trainable=["5.*"]']
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    head_bytes = 4 * (200 * 10 + 10)
    assert all(row["bytes_in"] < 3 * (head_bytes + 4096) for row in rounds)  # the head alone
    final = load_file(max((run_dir / "state" / "checkpoints").glob("round-*.safetensors")))
    pretrained = torch.load(backbone, weights_only=True)
    for name in ("1.weight", "1.bias", "3.weight", "3.bias"):  # frozen: as pretrained
        np.testing.assert_array_equal(final[name], pretrained[name].numpy())
    assert final["5.weight"].shape == (10, 200)  # a new head for the ten digits
    assert pretrained["5.weight"].shape == (5, 200)
