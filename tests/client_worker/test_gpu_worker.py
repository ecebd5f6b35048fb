"""Tests of the worker's GPU paths that run on the CPU: out of memory, peak memory, start."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from client_worker import __main__ as cli
from client_worker import worker
from client_worker.algorithms.local_round import train_round
from client_worker.device import DevicePlan
from client_worker.settings import WorkerSettings
from client_worker.virtual import run_virtual_clients
from shared.config import ExperimentConfig
from shared.data import Dataset
from tests.client_worker.test_worker import FakeAggregator, _run, _Sleeps, _State


def test_out_of_memory_in_one_virtual_client_skips_its_round_only(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed = threading.Event()
    freed: list[torch.device] = []

    def client_1_runs_out(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "client-1":
            failed.set()
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train_round(*args, **kwargs)

    monkeypatch.setattr(worker, "train_round", client_1_runs_out)
    monkeypatch.setattr(worker, "free_device_memory", freed.append)
    states = [_State(1, "training", ["0", "1", "2"], wait_for_posts=True), _State(1, "finished")]
    fake = FakeAggregator(states, global_weights)

    def others_posted(state: _State) -> bool:  # the round closes once client 1 has failed
        posted = {p["client_id"] for p in fake.posts if p["round"] == state.server_round}
        return failed.is_set() and posted >= {"0", "2"}

    monkeypatch.setattr(fake, "_all_posted", others_posted)
    with caplog.at_level(logging.ERROR, logger="client_worker.worker"):
        summaries = run_virtual_clients(
            [0, 1, 2],
            WorkerSettings(server_url="http://agg.test", device="cpu"),
            config,
            dataset=dataset,
            transport=httpx.MockTransport(fake.handler),
            sleep=_Sleeps(),
        )
    assert sorted(p["client_id"] for p in fake.posts) == ["0", "2"]
    assert [(s.rounds_trained, s.rounds_failed) for s in summaries] == [(1, 0), (0, 1), (1, 0)]
    assert all(s.outcome == "finished" for s in summaries)
    assert "failed 1" in summaries[1].line()
    (record,) = caplog.records
    assert "client 1: round 1: out of memory on cpu" in record.getMessage()
    assert "Tried to allocate 2.00 GiB" in record.getMessage()
    assert freed == [torch.device("cpu")]


def test_the_gpu_peak_goes_into_the_update_metrics(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DevicePlan, "peak_memory_mb", lambda self: 12.5)
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    _run(fake, config, dataset)
    (post,) = fake.posts
    assert post["metrics"]["gpu_peak_mb"] == 12.5


def test_on_the_cpu_the_update_has_no_gpu_figure(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    _run(fake, config, dataset, device="cpu", precision="bf16")
    (post,) = fake.posts
    assert "gpu_peak_mb" not in post["metrics"]
    assert np.isfinite(post["metrics"]["train_loss"])


def test_a_missing_gpu_exits_2_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "run_worker", lambda *a, **k: pytest.fail("the worker ran"))
    assert cli.main(["--device", "cuda:1", "--client-id", "0"]) == 2
    assert "device 'cuda:1' was asked for but CUDA is not available" in capsys.readouterr().err


def test_fp16_on_the_cpu_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "run_worker", lambda *a, **k: pytest.fail("the worker ran"))
    assert cli.main(["--device", "cpu", "--precision", "fp16"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_device_flags_become_settings() -> None:
    argv = ["--device", "cuda:0", "--precision", "bf16", "--gpu-sharing", "streams"]
    args = cli.build_parser().parse_args([*argv, "--device-data-budget-mb", "64"])
    fields = cli._settings_fields(args)
    assert fields["device"] == "cuda:0"
    assert (fields["precision"], fields["gpu_sharing"]) == ("bf16", "streams")
    assert fields["device_data_budget_mb"] == 64
