"""The runner's own logic: config resolution, run folder, command lines, a bad config."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import load_config
from shared.runs.__main__ import main
from shared.runs.cli import build_parser, resolve_config
from shared.runs.launch import Fleet
from shared.runs.layout import aggregator_argv, child_env, worker_argv
from shared.runs.report import create_run_dir, write_config


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
