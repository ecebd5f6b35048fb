"""Tests of simulated compute heterogeneity in the worker loop: a slowed-down client's wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from client_worker import virtual
from client_worker.local_model import ModelPool
from client_worker.settings import WorkerSettings
from shared.config import ExperimentConfig, load_config
from shared.data import Dataset
from shared.timeline import read_spans
from tests.client_worker.test_worker import FakeAggregator, _run, _Sleeps, _State


class _StopWhileWaiting(_Sleeps):
    """A recording sleep during which a stop arrives."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.stop = stop

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds)
        self.stop.set()


def _slowed(config: ExperimentConfig, clients: str, slowdown: float) -> ExperimentConfig:
    network = {"network": [{"clients": clients, "slowdown": slowdown}]}
    return load_config(overrides=config.model_dump(mode="json") | network)


def test_a_slowed_client_waits_its_extra_training_time_before_posting(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    sleeps = _Sleeps()
    summary = _run(fake, _slowed(config, "1", 5.0), dataset, sleeps=sleeps)
    (post,) = fake.posts
    assert summary.rounds_trained == 1
    assert sleeps.delays == pytest.approx([4 * post["metrics"]["train_seconds"]])


def test_a_client_outside_the_profile_is_not_slowed(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    sleeps = _Sleeps()
    _run(fake, _slowed(config, "7-9", 5.0), dataset, sleeps=sleeps)
    assert len(fake.posts) == 1
    assert sleeps.delays == []


def test_a_stop_during_the_slowdown_abandons_the_round(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    stop = threading.Event()
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    sleeps = _StopWhileWaiting(stop)
    summary = _run(fake, _slowed(config, "all", 3.0), dataset, stop=stop, sleeps=sleeps)
    assert len(sleeps.delays) == 1
    assert fake.posts == []
    assert summary.outcome == "stopped"
    assert summary.rounds_trained == 0


def test_virtual_clients_get_a_module_more_per_slowed_client(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int | None] = []

    class RecordingPool(ModelPool):
        def __init__(self, dataset: Dataset, size: int | None = 1) -> None:
            sizes.append(size)
            super().__init__(dataset, size)

    monkeypatch.setattr(virtual, "ModelPool", RecordingPool)
    states = [_State(1, "training", ["0", "1", "2"], wait_for_posts=True), _State(1, "finished")]
    fake = FakeAggregator(states, global_weights)
    virtual.run_virtual_clients(
        [0, 1, 2],
        WorkerSettings(server_url="http://agg.test", train_slots=1),
        _slowed(config, "1-2", 2.0),
        dataset=dataset,
        transport=httpx.MockTransport(fake.handler),
        sleep=_Sleeps(),
    )
    assert sizes == [2 * 1 + 2]
    assert sorted(post["client_id"] for post in fake.posts) == ["0", "1", "2"]


class _StampedSleeps(_Sleeps):
    """A recording sleep that also notes the wall-clock time of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[float] = []

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds)
        self.stamps.append(time.time())


def test_the_slowdown_is_part_of_the_training_phase(
    tmp_path: Path,
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
) -> None:
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    sleeps = _StampedSleeps()
    path = tmp_path / "timeline.jsonl"
    _run(fake, _slowed(config, "1", 2.0), dataset, sleeps=sleeps, timeline_path=path)
    with path.open() as lines:
        (training,) = [span for span in read_spans(lines) if span.phase == "training"]
    (stamp,) = sleeps.stamps
    assert training.start <= stamp <= training.end
