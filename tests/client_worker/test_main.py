"""Tests of the worker CLI: flag handling, exit codes, signals, summaries."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from client_worker import __main__ as cli
from client_worker.errors import FatalServerError, ServerUnavailableError
from client_worker.settings import WorkerSettings
from client_worker.summary import Activity, WorkerSummary
from shared.config import ExperimentConfig


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """main() installs signal handlers and sets torch's thread count: put both back."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    threads = torch.get_num_threads()
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    torch.set_num_threads(threads)


class _Calls:
    """Records what main passed to the (replaced) worker entry points."""

    def __init__(self) -> None:
        self.settings: list[WorkerSettings] = []
        self.configs: list[ExperimentConfig] = []
        self.client_ids: list[list[int]] = []


def _summary(client_id: str = "3", outcome: str = "finished") -> WorkerSummary:
    return WorkerSummary(client_id, int(client_id), 40, rounds_trained=2, outcome=outcome)


def _patch_worker(monkeypatch: pytest.MonkeyPatch, behaviour: Any) -> _Calls:
    calls = _Calls()

    def fake_run_worker(
        settings: WorkerSettings,
        config: ExperimentConfig,
        *,
        stop: threading.Event,
        activity: Activity,
    ) -> WorkerSummary:
        calls.settings.append(settings)
        calls.configs.append(config)
        result: WorkerSummary = behaviour(stop, activity)
        return result

    def fake_virtual(
        client_ids: list[int],
        settings: WorkerSettings,
        config: ExperimentConfig,
        *,
        stop: threading.Event,
        activity: Activity,
    ) -> list[WorkerSummary]:
        calls.client_ids.append(client_ids)
        calls.settings.append(settings)
        return [_summary(str(cid)) for cid in client_ids]

    monkeypatch.setattr(cli, "run_worker", fake_run_worker)
    monkeypatch.setattr(cli, "run_virtual_clients", fake_virtual)
    return calls


def test_flags_become_settings_and_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _patch_worker(monkeypatch, lambda stop, activity: _summary())
    argv = ["--server", "http://agg:9000", "--client-id", "3", "--partition-id", "1"]
    argv += ["--num-partitions", "4", "--max-rounds", "2", "--set", "num_rounds=7"]
    argv += ["--set", "partition.alpha=0.3", "--data-dir", "/tmp/data", "--download"]
    assert cli.main(argv) == 0
    settings, config = calls.settings[0], calls.configs[0]
    assert settings.server_url == "http://agg:9000"
    assert (settings.client_id, settings.partition_id, settings.num_partitions) == ("3", 1, 4)
    assert (settings.max_rounds, settings.download) == (2, True)
    assert str(settings.data_dir) == "/tmp/data"
    assert (config.num_rounds, config.partition.alpha) == (7, 0.3)
    assert torch.get_num_threads() == 1  # settings.torch_threads, set once
    assert capsys.readouterr().out.strip() == _summary().line()


def test_client_ids_run_virtual_clients(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _patch_worker(monkeypatch, lambda stop, activity: _summary())
    assert cli.main(["--client-ids", "0,3-5"]) == 0
    assert calls.client_ids == [[0, 3, 4, 5]]
    assert calls.settings[0].train_slots is None  # no limit unless asked
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # one summary per client


def test_train_slots_flag_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _patch_worker(monkeypatch, lambda stop, activity: _summary())
    assert cli.main(["--client-ids", "0-4", "--train-slots", "1"]) == 0
    assert calls.client_ids == [[0, 1, 2, 3, 4]]
    assert calls.settings[0].train_slots == 1


def test_timeline_file_flag_reaches_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _patch_worker(monkeypatch, lambda stop, activity: _summary())
    path = tmp_path / "timeline" / "worker-3.jsonl"
    assert cli.main(["--client-id", "3", "--timeline-file", str(path)]) == 0
    assert calls.settings[0].timeline_path == path


def test_zero_train_slots_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--client-ids", "0-4", "--train-slots", "0"]) == 2
    assert "train_slots" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (FatalServerError(422, "tensor 'w' has shape [3]", "spec_mismatch"), 2, "HTTP 422"),
        (ServerUnavailableError("gave up after 600 s"), 1, "aggregator unavailable"),
    ],
)
def test_errors_map_to_exit_codes_with_one_line_on_stderr(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
    message: str,
) -> None:
    def fail(stop: threading.Event, activity: Activity) -> WorkerSummary:
        raise error

    _patch_worker(monkeypatch, fail)
    assert cli.main(["--client-id", "3"]) == code
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_bad_override_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--set", "num_rounds"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_sigterm_sets_the_stop_event_and_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    def wait_for_stop(stop: threading.Event, activity: Activity) -> WorkerSummary:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread's handler
        assert stop.wait(timeout=10), "SIGTERM did not set the stop event"
        return _summary(outcome="stopped")

    _patch_worker(monkeypatch, wait_for_stop)
    assert cli.main(["--client-id", "3"]) == 0


def test_stop_does_not_wait_for_a_client_idle_in_a_long_poll(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def idle_in_long_poll(stop: threading.Event, activity: Activity) -> WorkerSummary:
        activity.track(_summary(outcome="running"))
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(3.0)  # a long poll that a stop cannot interrupt
        return _summary()

    _patch_worker(monkeypatch, idle_in_long_poll)
    started = time.monotonic()
    assert cli.main(["--client-id", "3"]) == 0
    assert time.monotonic() - started < 2.5
    assert "client 3 stopped:" in capsys.readouterr().out


def test_stop_lets_a_round_in_progress_finish(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def posting(stop: threading.Event, activity: Activity) -> WorkerSummary:
        with activity.busy():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(timeout=10)
            time.sleep(1.0)  # the post in flight completes
        return _summary(outcome="stopped")

    _patch_worker(monkeypatch, posting)
    started = time.monotonic()
    assert cli.main(["--client-id", "3"]) == 0
    assert time.monotonic() - started >= 1.0
    assert capsys.readouterr().out.strip() == _summary(outcome="stopped").line()
