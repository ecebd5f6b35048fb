"""The runner's own logic: config resolution, run folder, command lines, supervision.

Supervision runs against a stand-in aggregator (fake_aggregator.py) and tiny stand-in
workers, so these tests need neither torch nor the real services.
"""

from __future__ import annotations

import io
import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from shared.config import load_config
from shared.runs.__main__ import (
    aggregator_argv,
    build_parser,
    child_env,
    create_run_dir,
    interrupted,
    main,
    resolve_config,
    supervise,
    worker_argv,
    write_config,
)
from shared.runs.launch import Child, Fleet, StopSignals, free_port, wait_healthy
from shared.runs.progress import LinePrinter

FAKE_AGGREGATOR = Path(__file__).with_name("fake_aggregator.py")


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def exp_yaml(tmp_path: Path) -> Path:
    return write_yaml(
        tmp_path / "exp.yaml",
        {"num_partitions": 10, "min_available_clients": 10, "min_fit_clients": 8},
    )


def test_flags_map_to_config_keys(exp_yaml: Path) -> None:
    argv = ["--config", str(exp_yaml), "--clients", "12", "--rounds", "3", "--model", "cnn"]
    argv += ["--dataset", "synthetic", "--partition", "dirichlet", "--alpha", "0.3"]
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    assert config.num_partitions == 12
    assert config.num_rounds == 3
    assert config.model == "cnn"
    assert config.dataset == "synthetic"
    assert config.partition.name == "dirichlet"
    assert config.partition.alpha == 0.3
    assert config.min_available_clients == 10  # 10 of 12 is possible: left alone
    assert config.min_fit_clients == 8


def test_fewer_clients_cap_the_minimums(exp_yaml: Path) -> None:
    config = resolve_config(
        build_parser().parse_args(["--config", str(exp_yaml), "--clients", "3"])
    )
    assert config.num_partitions == 3
    assert config.min_available_clients == 3
    assert config.min_fit_clients == 3


@pytest.mark.parametrize("strategy", ["scaffold", "krum"])
def test_the_cap_comes_before_strategy_checks_on_min_fit_clients(
    exp_yaml: Path, strategy: str
) -> None:
    # SCAFFOLD's N and Krum's f are checked against the clients when the config loads:
    # with min_fit_clients 8 of the YAML and 3 clients, only the capped config is valid.
    argv = ["--config", str(exp_yaml), "--clients", "3", "--set", f"strategy={strategy}"]
    config = resolve_config(build_parser().parse_args(argv))
    assert (config.strategy.name, config.min_fit_clients) == (strategy, 3)


def test_flags_win_over_set_and_set_over_the_yaml(exp_yaml: Path) -> None:
    argv = ["--config", str(exp_yaml), "--set", "num_rounds=7", "--set", "lr=0.2"]
    argv += ["--set", "partition.alpha=0.9", "--rounds", "4"]
    config = resolve_config(build_parser().parse_args(argv))
    assert config.num_rounds == 4
    assert config.lr == 0.2
    assert config.partition.alpha == 0.9


def test_run_dir_is_named_after_time_model_and_dataset(tmp_path: Path, exp_yaml: Path) -> None:
    config = load_config(exp_yaml, {"model": "mlp-128", "dataset": "mnist5k"})
    now = time.mktime((2024, 3, 5, 14, 7, 9, 0, 0, -1))
    first = create_run_dir(tmp_path / "runs", config, now=now)
    second = create_run_dir(tmp_path / "runs", config, now=now)
    assert first.name == "20240305-140709-mlp-128-mnist5k"
    assert second.name == "20240305-140709-mlp-128-mnist5k-2"
    assert (first / "logs").is_dir()


def test_written_config_loads_back_equal(tmp_path: Path) -> None:
    network = [{"clients": "0-2", "latency_ms": 20, "jitter": "exponential", "jitter_ms": 30}]
    config = load_config(None, {"partition": {"name": "classes", "classes": [[0], [1]]}})
    config = load_config(None, {**config.model_dump(mode="json"), "network": network})
    path = write_config(tmp_path, config)
    assert path == tmp_path / "config.yaml"
    assert load_config(path) == config


def test_command_lines() -> None:
    agg = aggregator_argv(Path("r/config.yaml"), port=8123, state_dir=Path("r/state"))
    assert agg[:3] == [sys.executable, "-m", "aggregator_service"]
    assert " ".join(agg[3:]) == (
        "--config r/config.yaml --host 127.0.0.1 --port 8123 --state-dir r/state --no-access-log"
    )
    worker = worker_argv(
        Path("c.yaml"), url="http://127.0.0.1:8123", partition_id=4, num_partitions=10
    )
    assert worker[:3] == [sys.executable, "-m", "client_worker"]
    assert " ".join(worker[3:]) == (
        "--server http://127.0.0.1:8123 --client-id 4 --partition-id 4 --num-partitions 10 "
        "--config c.yaml"
    )


def test_workers_get_one_thread() -> None:
    env = child_env(worker=True)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["TRIBUTARY_WORKER_TORCH_THREADS"] == "1"
    assert float(env["TRIBUTARY_WORKER_STOP_GRACE_S"]) < Fleet().grace_s
    assert child_env(worker=False)["PYTHONUNBUFFERED"] == "1"


def test_a_bad_config_exits_2_without_a_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", {"num_round": 3})
    code = main(["--config", str(bad), "--runs-dir", str(tmp_path / "runs"), "--no-live"])
    assert code == 2
    assert "unknown key 'num_round'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ supervision


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
