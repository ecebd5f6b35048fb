"""Run one shipped scenario config with real processes: an aggregator and ONE worker process.

The worker hosts every client of the config as a virtual client (`--client-ids 0-N`), so a
scenario costs two torch imports instead of N + 1. Both processes get the same config and
the same `--set` overrides. The aggregator runs with `--exit-when-finished`, so both
processes end by themselves; the round history is then read from the aggregator's state dir.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator_service.store import RunStore

from shared.config import ExperimentConfig, load_config, parse_overrides
from tests.fault.procs import REPO, Proc, Processes, free_port, wait_healthy
from tests.shared.fake_datasets import fake_images, write_cifar10

__all__ = [
    "CONFIGS",
    "ScenarioRun",
    "model_payload_bytes",
    "run_scenario",
    "write_tiny_cifar10",
]

CONFIGS = REPO / "configs"
HEALTH_TIMEOUT_S = 90.0  # the aggregator imports torch while the worker does the same
AGGREGATOR_EXIT_TIMEOUT_S = 30.0  # after the worker: the server shuts down gracefully
WORKER_ENV = {
    # The worker starts alongside the aggregator: retry its first requests often.
    "TRIBUTARY_WORKER_BACKOFF_CAP_S": "0.5",
    "TRIBUTARY_WORKER_BACKOFF_MAX_TIME_S": "120",
    "TRIBUTARY_WORKER_STOP_GRACE_S": "3",
    "PYTHONUNBUFFERED": "1",
}


@dataclass(frozen=True)
class ScenarioRun:
    """What one scenario run left behind: exit codes, the round history, the logs."""

    config: ExperimentConfig
    worker_code: int
    aggregator_code: int
    history: list[dict[str, Any]]
    logs: str


def write_tiny_cifar10(root: Path, *, per_class: int, test_size: int) -> Path:
    """Write a CIFAR-10 folder with `per_class` training images of each of the ten labels."""
    train_labels = np.repeat(np.arange(10), per_class)
    test_labels = np.arange(test_size) % 10
    train = (fake_images(len(train_labels), (3, 32, 32)), train_labels)
    test = (fake_images(test_size, (3, 32, 32), offset=7), test_labels)
    return write_cifar10(root, train=train, test=test)


def model_payload_bytes(config: ExperimentConfig) -> int:
    """Return the raw bytes of every tensor of the config's initial global model."""
    from shared.models import init_global_weights

    weights = init_global_weights(config.model, seed=config.seed, **config.model_args())
    return sum(int(array.nbytes) for array in weights.values())


def run_scenario(
    procs: Processes,
    config_path: Path,
    overrides: Sequence[str],
    *,
    state_dir: Path,
    timeout_s: float,
) -> ScenarioRun:
    """Run `config_path` with `overrides` until the worker exits; return what happened."""
    config = load_config(config_path, parse_overrides(list(overrides)))
    sets = [item for override in overrides for item in ("--set", override)]
    aggregator = _start_aggregator(procs, config_path, sets, state_dir=state_dir)
    client_ids = f"0-{config.num_partitions - 1}"
    worker = procs.spawn(
        "worker",
        [sys.executable, "-m", "client_worker", "--server", aggregator.url]
        + ["--client-ids", client_ids, "--config", str(config_path), *sets],
        env=WORKER_ENV,
    )
    wait_healthy(aggregator, timeout=HEALTH_TIMEOUT_S)
    worker_code = _wait_exit(worker, timeout_s=timeout_s, procs=procs)
    aggregator_code = _wait_exit(aggregator, timeout_s=AGGREGATOR_EXIT_TIMEOUT_S, procs=procs)
    with RunStore(state_dir) as store:
        history = store.history()
    return ScenarioRun(config, worker_code, aggregator_code, history, procs.logs())


def _start_aggregator(
    procs: Processes, config_path: Path, sets: list[str], *, state_dir: Path
) -> Proc:
    port = free_port()
    command = [sys.executable, "-m", "aggregator_service", "--config", str(config_path)]
    command += ["--port", str(port), "--state-dir", str(state_dir), "--exit-when-finished"]
    proc = procs.spawn("aggregator", [*command, *sets], env={"PYTHONUNBUFFERED": "1"})
    proc.url = f"http://127.0.0.1:{port}"
    return proc


def _wait_exit(proc: Proc, *, timeout_s: float, procs: Processes) -> int:
    """Wait for `proc` to exit and return its code; fail with every log after `timeout_s`."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.name} still running after {timeout_s} s:\n{procs.logs()}")
