"""Tests of the worker settings: environment, defaults from the experiment, validation."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from client_worker.settings import WorkerSettings
from shared.config import load_config
from shared.errors import ConfigError


def test_defaults_have_finite_explicit_timeouts() -> None:
    settings = WorkerSettings()
    assert settings.long_poll_wait_s == 30.0
    assert settings.torch_threads == 1
    # read = long-poll wait + 30 s margin
    assert settings.http_timeout() == httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=5.0)
    assert (settings.backoff_base_s, settings.backoff_cap_s, settings.backoff_max_time_s) == (
        0.5,
        30.0,
        600.0,
    )


def test_read_timeout_follows_the_long_poll_wait() -> None:
    assert WorkerSettings(long_poll_wait_s=5).http_timeout().read == 35.0
    assert WorkerSettings(long_poll_wait_s=5, read_timeout_s=9).http_timeout().read == 9.0


def test_environment_with_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIBUTARY_WORKER_SERVER_URL", "http://agg:8000")
    monkeypatch.setenv("TRIBUTARY_WORKER_CLIENT_ID", "7")
    monkeypatch.setenv("TRIBUTARY_WORKER_MAX_ROUNDS", "3")
    settings = WorkerSettings()
    assert (settings.server_url, settings.client_id, settings.max_rounds) == (
        "http://agg:8000",
        "7",
        3,
    )
    assert WorkerSettings(client_id="8").client_id == "8"  # keyword arguments win


def test_partition_id_defaults_to_the_numeric_client_id() -> None:
    assert WorkerSettings(client_id="4").resolved_partition_id() == 4
    assert WorkerSettings(client_id="edge-a", partition_id=2).resolved_partition_id() == 2
    with pytest.raises(ConfigError, match="'edge-a' is not a number"):
        WorkerSettings(client_id="edge-a").resolved_partition_id()


def test_experiment_defaults_fill_the_unset_fields() -> None:
    config = load_config(overrides={"num_partitions": 6, "seed": 11, "data_dir": "/data/a"})
    plain = WorkerSettings()
    assert plain.resolved_num_partitions(config) == 6
    assert plain.resolved_seed(config) == 11
    assert plain.experiment_for_worker(config) is config
    own = WorkerSettings(num_partitions=3, seed=2, data_dir=Path("/tmp/d"), download=True)
    assert own.resolved_num_partitions(config) == 3
    assert own.resolved_seed(config) == 2
    applied = own.experiment_for_worker(config)
    assert (applied.data_dir, applied.download) == (Path("/tmp/d"), True)
    assert applied.num_partitions == 6  # only data_dir and download are replaced


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValidationError, match="must exceed long_poll_wait_s"):
        WorkerSettings(long_poll_wait_s=30, read_timeout_s=20)
    with pytest.raises(ValidationError, match="exceeds backoff_cap_s"):
        WorkerSettings(backoff_base_s=10, backoff_cap_s=1)
    with pytest.raises(ValidationError, match="server"):
        WorkerSettings(server="http://x")  # type: ignore[call-arg]


def test_train_slots_default_to_no_limit_and_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert WorkerSettings().train_slots is None
    monkeypatch.setenv("TRIBUTARY_WORKER_TRAIN_SLOTS", "2")
    assert WorkerSettings().train_slots == 2
    with pytest.raises(ValidationError, match="train_slots"):
        WorkerSettings(train_slots=0)
