"""Tests of a client's own timeline: its phases as the loop goes, and the file they go to."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import numpy as np

from client_worker.settings import WorkerSettings
from client_worker.timeline import Timeline, TimelineFile
from client_worker.virtual import run_virtual_clients
from shared.config import ExperimentConfig
from shared.data import Dataset
from shared.timeline import PhaseSpan, read_spans
from tests.client_worker.test_worker import FakeAggregator, _run, _Sleeps, _State


class _Clock:
    """A clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _spans(path: Path) -> list[tuple[str, str, int]]:
    with path.open() as lines:
        return [(span.client_id, span.phase, span.round) for span in read_spans(lines)]


def test_a_round_goes_training_uploading_waiting_then_idle(tmp_path: Path) -> None:
    sink = TimelineFile(tmp_path / "deep" / "worker.jsonl")
    timeline = Timeline("4", sink, clock=_Clock())
    timeline.polling(0)  # idle from 101
    timeline.seen(1, taking_part=True)  # closed at 102
    assert timeline.training(1, lambda: "trained") == "trained"  # training from 103
    timeline.enter("uploading", 1)  # at 104
    timeline.round_over(1)  # waiting from 105
    timeline.polling(1)  # still waiting
    timeline.seen(1, taking_part=False)  # the same round: still waiting
    timeline.seen(2, taking_part=False)  # round 2 without this client: idle from 106
    timeline.close()  # at 107
    with sink.path.open() as lines:
        spans = read_spans(lines)
    assert spans == [
        PhaseSpan("4", 0, "idle", 101.0, 102.0),
        PhaseSpan("4", 1, "training", 103.0, 104.0),
        PhaseSpan("4", 1, "uploading", 104.0, 105.0),
        PhaseSpan("4", 1, "waiting", 105.0, 106.0),
        PhaseSpan("4", 2, "idle", 106.0, 107.0),
    ]


def test_an_interrupted_training_ends_without_waiting(tmp_path: Path) -> None:
    sink = TimelineFile(tmp_path / "worker.jsonl")
    timeline = Timeline("0", sink, clock=_Clock())
    timeline.enter("training", 3)
    timeline.close()  # crashed
    timeline.round_over(3)
    assert _spans(sink.path) == [("0", "training", 3)]


def test_without_a_file_nothing_is_recorded() -> None:
    timeline = Timeline("0", clock=_Clock())
    timeline.enter("training", 1)
    timeline.round_over(1)
    assert timeline.open is None


def test_the_worker_records_its_phases(
    tmp_path: Path,
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
) -> None:
    states = [
        _State(1, "waiting"),
        _State(1, "training", ["1"]),
        _State(2, "training", ["0", "2"]),  # this client ("1") is not selected
        _State(2, "finished"),
    ]
    fake = FakeAggregator(states, global_weights)
    path = tmp_path / "timeline.jsonl"
    _run(fake, config, dataset, sleeps=_Sleeps(), timeline_path=path)
    assert _spans(path) == [
        ("1", "idle", 0),  # before the first answer
        ("1", "idle", 1),  # round 1 is waiting for clients
        ("1", "training", 1),
        ("1", "uploading", 1),
        ("1", "waiting", 1),
        ("1", "idle", 2),
    ]
    with path.open() as lines:
        spans = read_spans(lines)
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


def test_virtual_clients_write_one_file_with_a_lane_each(
    tmp_path: Path,
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
) -> None:
    states = [_State(1, "training", ["0", "1", "2"], wait_for_posts=True), _State(1, "finished")]
    fake = FakeAggregator(states, global_weights)
    path = tmp_path / "worker-0-2.jsonl"
    settings = WorkerSettings(server_url="http://agg.test", timeline_path=path)
    run_virtual_clients(
        [0, 1, 2],
        settings,
        config,
        dataset=dataset,
        transport=httpx.MockTransport(fake.handler),
        sleep=_Sleeps(),
    )
    spans = _spans(path)
    for client in "012":
        assert (client, "training", 1) in spans
        assert (client, "uploading", 1) in spans
