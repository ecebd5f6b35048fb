"""Run one shipped scenario config with real processes: an aggregator and ONE worker process.

The worker hosts every client of the config as a virtual client (`--client-ids 0-N`), so a
scenario costs two torch imports instead of N + 1. Both processes get the same config and
the same `--set` overrides. The worker exits by itself once the aggregator says "finished";
the aggregator stays up (as under the runner), so /history is read from it, then it is
stopped with SIGTERM and its state dir's history is read back too.

Not `--exit-when-finished`: the aggregator then stops serving at once, and a virtual client
that had not yet seen "finished" (its update refused by a closed round, or a request held
in the simulated network delay) retries against a closed port until it gives up (exit 1).

Fake CIFAR-10 files cannot match the real files' md5 sums, which torchvision checks, so a
scenario may start its processes through this module (`python -m
tests.shared.runs.scenario_helpers aggregator_service ...`): it drops the md5 sums from
torchvision's CIFAR10 class (presence check only), then runs the named module as __main__.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator_service.store.run_store import RunStore
from shared.config import ExperimentConfig, load_config, parse_overrides
from tests.fault.procs import REPO, Proc, Processes, free_port, get_json, wait_healthy
from tests.shared.fake_datasets import CIFAR_LABEL_NAMES, fake_images, write_cifar10

__all__ = [
    "CONFIGS",
    "MD5_FREE_LAUNCHER",
    "PLAIN_LAUNCHER",
    "ScenarioRun",
    "model_payload_bytes",
    "run_module_without_cifar_md5",
    "run_scenario",
    "write_tiny_cifar10",
]

CONFIGS = REPO / "configs"
HEALTH_TIMEOUT_S = 90.0  # the aggregator imports torch while the worker does the same
AGGREGATOR_EXIT_TIMEOUT_S = 20.0  # uvicorn allows open requests 10 s after SIGTERM
WORKER_ENV = {
    # The worker starts alongside the aggregator: retry its first requests often.
    "TRIBUTARY_WORKER_BACKOFF_CAP_S": "0.5",
    "TRIBUTARY_WORKER_BACKOFF_MAX_TIME_S": "120",
    "TRIBUTARY_WORKER_STOP_GRACE_S": "3",
    "PYTHONUNBUFFERED": "1",
}
PLAIN_LAUNCHER: tuple[str, ...] = (sys.executable, "-m")
MD5_FREE_LAUNCHER: tuple[str, ...] = (sys.executable, "-m", "tests.shared.runs.scenario_helpers")


@dataclass(frozen=True)
class ScenarioRun:
    """What one scenario run left behind: exit codes, the round history, the logs."""

    config: ExperimentConfig
    worker_code: int
    aggregator_code: int
    history: list[dict[str, Any]]
    stored_history: list[dict[str, Any]]
    logs: str
    status: dict[str, Any]  # /status once the worker exited


def write_tiny_cifar10(root: Path, *, per_class: int, test_size: int) -> Path:
    """Write a CIFAR-10 folder with `per_class` training images of each of the ten labels."""
    train_labels = np.repeat(np.arange(10), per_class)
    test_labels = np.arange(test_size) % 10
    train = (fake_images(len(train_labels), (3, 32, 32)), train_labels)
    test = (fake_images(test_size, (3, 32, 32), offset=7), test_labels)
    # Ten names as in the real batches.meta: the worker sizes the model's output from them.
    names = [*CIFAR_LABEL_NAMES, "dog", "frog", "horse", "ship", "truck"]
    return write_cifar10(root, train=train, test=test, label_names=names)


def model_payload_bytes(config: ExperimentConfig, *, sent: bool = False) -> int:
    """Return the raw bytes of the config's initial global model (`sent`: of what trains)."""
    from shared.models import init_global_weights, trainable_names

    weights = init_global_weights(config.model, seed=config.seed, **config.model_args())
    names = trainable_names(weights, config.trainable) if sent else list(weights)
    return sum(int(weights[name].nbytes) for name in names)


def run_scenario(
    procs: Processes,
    config_path: Path,
    overrides: Sequence[str],
    *,
    state_dir: Path,
    timeout_s: float,
    launcher: Sequence[str] = PLAIN_LAUNCHER,
) -> ScenarioRun:
    """Run `config_path` with `overrides` until the worker exits; return what happened."""
    config = load_config(config_path, parse_overrides(list(overrides)))
    sets = [item for override in overrides for item in ("--set", override)]
    aggregator = _start_aggregator(
        procs, [*launcher, "aggregator_service"], config_path, sets, state_dir=state_dir
    )
    client_ids = f"0-{config.num_partitions - 1}"
    worker = procs.spawn(
        "worker",
        [
            *(*launcher, "client_worker", "--server", aggregator.url),
            *("--client-ids", client_ids, "--config", str(config_path), *sets),
        ],
        env=WORKER_ENV,
    )
    wait_healthy(aggregator, timeout=HEALTH_TIMEOUT_S)
    worker_code = _wait_exit(worker, timeout_s=timeout_s, procs=procs)
    history: list[dict[str, Any]] = get_json(aggregator.url, "/history")
    status: dict[str, Any] = get_json(aggregator.url, "/status")
    os.kill(aggregator.pid, signal.SIGTERM)
    aggregator_code = _wait_exit(aggregator, timeout_s=AGGREGATOR_EXIT_TIMEOUT_S, procs=procs)
    with RunStore(state_dir) as store:
        stored_history = store.history()
    logs = procs.logs()
    return ScenarioRun(config, worker_code, aggregator_code, history, stored_history, logs, status)


def _start_aggregator(
    procs: Processes, module: list[str], config_path: Path, sets: list[str], *, state_dir: Path
) -> Proc:
    port = free_port()
    command = [*module, "--config", str(config_path)]
    command += ["--port", str(port), "--state-dir", str(state_dir)]
    proc = procs.spawn("aggregator", [*command, *sets], env={"PYTHONUNBUFFERED": "1"})
    proc.url = f"http://127.0.0.1:{port}"
    return proc


def _wait_exit(proc: Proc, *, timeout_s: float, procs: Processes) -> int:
    """Wait for `proc` to exit and return its code; fail with every log after `timeout_s`."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.name} still running after {timeout_s} s:\n{procs.logs()}")


def run_module_without_cifar_md5(argv: Sequence[str]) -> None:
    """Run module argv[0] as __main__ with argv[1:], CIFAR-10 checked for presence only."""
    import torchvision.datasets

    cifar = torchvision.datasets.CIFAR10
    cifar.train_list = [[name, None] for name, _ in cifar.train_list]
    cifar.test_list = [[name, None] for name, _ in cifar.test_list]
    cifar.meta = {**cifar.meta, "md5": None}
    module, *args = argv
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run_module_without_cifar_md5(sys.argv[1:])
