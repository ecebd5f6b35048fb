"""Tests of the worker loop against a fake aggregator (an httpx.MockTransport handler)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from client_worker import local_model
from client_worker.errors import FatalServerError
from client_worker.settings import WorkerSettings
from client_worker.summary import Activity
from client_worker.train import train
from client_worker.virtual import run_virtual_clients
from client_worker.worker import run_worker
from shared.config import ExperimentConfig, load_config
from shared.data import Dataset
from shared.errors import ConfigError
from shared.models import build_model, model_spec
from shared.wire import decode_message, decode_weights, encode_message
from tests.client_worker.conftest import NUM_PARTITIONS, TRAIN_SIZE


@dataclass
class _State:
    server_round: int
    phase: str
    selected: list[str] = field(default_factory=list)
    wait_for_posts: bool = False  # polls do not move on until every selected client posted


class FakeAggregator:
    """Serves a scripted sequence of states; a poll whose ETag is current gets 304 and
    moves the script on (the change a real long poll would wait for); the last selected
    client's post of a training round moves it on too."""

    def __init__(self, states: list[_State], weights: dict[str, np.ndarray]) -> None:
        self.states = states
        self.index = 0
        self.weights = weights
        self.posts: list[dict[str, Any]] = []
        self.post_bodies: list[bytes] = []
        self.polls: list[httpx.Request] = []
        self.registered: list[dict[str, Any]] = []
        self.register_bytes = 0
        self.reject: dict[str, Any] | None = None  # a 4xx JSON answer to every post
        self.reject_status = 409
        self.on_poll: Any = None  # called with each poll request
        self.send_etag = True
        self.round_config: dict[str, Any] = {}  # merged into the round config sent
        self.groups: dict[str, Any] | None = None  # published as protocol 2 when set
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if request.url.path == "/register":
                self.registered.append(json.loads(request.content))
                self.register_bytes += len(request.content)
                return httpx.Response(200, json={"registered": True, "round": 1})
            if request.url.path == "/get_weights":
                return self._poll(request)
            assert request.url.path == "/receive"
            return self._receive(request)

    def _etag(self) -> str:
        return f'"s{self.index}"'

    def _poll(self, request: httpx.Request) -> httpx.Response:
        self.polls.append(request)
        if self.on_poll is not None:
            self.on_poll(request)
        state = self.states[self.index]
        min_round = int(request.url.params["min_round"])
        stale = request.headers.get("If-None-Match") == self._etag()
        waiting = state.server_round < min_round and state.phase != "finished"
        if (stale or waiting) and not (state.wait_for_posts and not self._all_posted(state)):
            self.index = min(self.index + 1, len(self.states) - 1)
            return httpx.Response(304)
        message: dict[str, Any] = {
            "protocol": 1,
            "round": state.server_round,
            "phase": state.phase,
            "model": "mlp",
            "selected": state.selected,
            "config": {
                "model": "mlp",
                "dataset": "synthetic",
                "local_epochs": 2,
                "batch_size": 8,
                "lr": 0.1,
                "momentum": 0.0,
                "weight_decay": 0.0,
                "mu": 0.0,
                "seed": 0,
                "num_partitions": NUM_PARTITIONS,
            }
            | self.round_config,
            "weights": self.weights,
        }
        if self.groups is not None:
            message |= {"protocol": 2, "groups": self.groups}
        selected = request.url.params["client_id"] in state.selected
        headers = {"ETag": self._etag(), "X-Tributary-Selected": str(selected).lower()}
        if not self.send_etag:
            del headers["ETag"]
        return httpx.Response(200, content=encode_message(message), headers=headers)

    def _all_posted(self, state: _State) -> bool:
        posted = {p["client_id"] for p in self.posts if p["round"] == state.server_round}
        return posted >= set(state.selected)

    def _receive(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Content-Type"] == "application/msgpack"
        if self.reject is not None:
            return httpx.Response(self.reject_status, json=self.reject)
        self.post_bodies.append(request.content)
        message = decode_message(request.content)
        self.posts.append(message)
        state = self.states[self.index]
        if self._all_posted(state):
            self.index = min(self.index + 1, len(self.states) - 1)
        answer = {"accepted": True, "duplicate": False, "round": message["round"]}
        return httpx.Response(200, json=answer | {"received": len(self.posts), "needed": 1})


class _Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _run(
    fake: FakeAggregator,
    config: ExperimentConfig,
    dataset: Dataset,
    *,
    client_id: str = "1",
    stop: threading.Event | None = None,
    sleeps: _Sleeps | None = None,
    **settings: Any,
) -> Any:
    worker_settings = WorkerSettings(server_url="http://agg.test", client_id=client_id, **settings)
    return run_worker(
        worker_settings,
        config,
        stop=stop,
        dataset=dataset,
        transport=httpx.MockTransport(fake.handler),
        sleep=sleeps or _Sleeps(),
    )


def _spec() -> Any:
    return model_spec(build_model("mlp", in_channels=1, num_classes=3, image_size=4))


def test_a_non_finite_loss_is_left_out_of_the_metrics(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses

    import client_worker.algorithms.local_round as local_round

    def diverging(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(train(*args, **kwargs), train_loss=float("nan"))

    monkeypatch.setattr(local_round, "train", diverging)
    states = [_State(1, "training", ["1"]), _State(1, "finished")]
    fake = FakeAggregator(states, global_weights)
    _run(fake, config, dataset)
    (post,) = fake.posts
    assert set(post["metrics"]) == {"train_seconds", "train_cpu_seconds", "examples_per_second"}


def test_full_loop_trains_the_selected_round_and_exits_when_finished(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    states = [
        _State(1, "waiting"),
        _State(1, "training", ["1"]),  # round 1 closes on this client's post
        _State(2, "training", ["0", "2"]),  # this client ("1") is not selected
        _State(2, "finished"),
    ]
    fake = FakeAggregator(states, global_weights)
    summary = _run(fake, config, dataset)

    assert fake.registered == [{"client_id": "1", "num_examples": 20}]
    assert len(fake.posts) == 1
    post = fake.posts[0]
    assert (post["protocol"], post["client_id"], post["round"]) == (1, "1", 1)
    assert post["num_examples"] == TRAIN_SIZE // NUM_PARTITIONS
    weights = decode_weights(post["weights"], spec=_spec())
    assert any(not np.array_equal(weights[k], global_weights[k]) for k in weights)  # trained
    metrics = post["metrics"]
    assert set(metrics) == {
        "train_loss",
        "train_seconds",
        "train_cpu_seconds",
        "examples_per_second",
    }
    assert metrics["train_loss"] > 0
    assert 0 < metrics["train_cpu_seconds"] <= metrics["train_seconds"] + 0.01

    # Polls ask for the next round with the last ETag: min_round 1 until round 1 is done.
    assert [int(p.url.params["min_round"]) for p in fake.polls] == [1, 1, 1, 2, 2, 2]
    assert [p.headers.get("If-None-Match") for p in fake.polls] == [
        None,
        '"s0"',
        '"s0"',
        '"s1"',
        '"s2"',
        '"s2"',
    ]

    assert summary.outcome == "finished"
    assert (summary.client_id, summary.partition_id, summary.num_examples) == ("1", 1, 20)
    assert summary.rounds_trained == 1
    assert summary.rounds_skipped == summary.rounds_crashed == summary.rounds_rejected == 0
    assert summary.examples_trained == 2 * 20  # local_epochs = 2
    assert summary.last_round == 2
    assert summary.bytes_up == len(fake.post_bodies[0]) + fake.register_bytes
    assert summary.bytes_down > sum(a.nbytes for a in global_weights.values())
    assert "client 1 finished" in summary.line()


def test_training_is_reproducible_across_runs(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    posted = []
    for _ in range(2):
        fake = FakeAggregator([_State(1, "training", ["2"]), _State(1, "finished")], global_weights)
        _run(fake, config, dataset, client_id="2")
        posted.append(decode_weights(fake.posts[0]["weights"], spec=_spec()))
    for name in posted[0]:
        np.testing.assert_array_equal(posted[0][name], posted[1][name])


def test_bounded_mode_exits_after_max_rounds(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    states = [_State(r, "training", ["0"]) for r in (1, 2, 3)] + [_State(3, "finished")]
    fake = FakeAggregator(states, global_weights)
    summary = _run(fake, config, dataset, client_id="0", max_rounds=2)
    assert [p["round"] for p in fake.posts] == [1, 2]
    assert summary.outcome == "max_rounds"
    assert summary.rounds_trained == 2


def test_stop_event_ends_a_waiting_worker_cleanly(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    stop = threading.Event()
    fake = FakeAggregator([_State(1, "waiting")], global_weights)
    fake.on_poll = lambda request: stop.set() if len(fake.polls) == 3 else None
    summary = _run(fake, config, dataset, stop=stop)
    assert summary.outcome == "stopped"
    assert len(fake.polls) == 3
    assert fake.posts == []


def test_stop_during_training_abandons_the_round_without_posting(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    stop = threading.Event()
    fake = FakeAggregator([_State(1, "training", ["1"])], global_weights)
    fake.on_poll = lambda request: stop.set()  # the stop arrives while the reply is in flight
    summary = _run(fake, config, dataset, stop=stop)
    assert summary.outcome == "stopped"
    assert fake.posts == []
    assert summary.rounds_trained == 0


def test_rejected_update_is_dropped_and_polling_goes_on(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(2, "finished")], global_weights)
    fake.reject = {"error": "stale_round", "detail": "round 1 closed", "round": 2}
    summary = _run(fake, config, dataset)
    assert summary.rounds_rejected == 1
    assert summary.rounds_trained == 0
    assert summary.outcome == "finished"
    assert int(fake.polls[-1].url.params["min_round"]) == 2


def test_fatal_server_error_propagates(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    fake = FakeAggregator([_State(1, "training", ["1"])], global_weights)
    fake.reject, fake.reject_status = {"error": "spec_mismatch", "detail": "bad tensor"}, 422
    with pytest.raises(FatalServerError, match="422 spec_mismatch: bad tensor"):
        _run(fake, config, dataset)


def test_simulated_dropout_skips_rounds_without_posting(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    network = {"network": [{"clients": "1", "dropout": 1.0}]}
    dropping = load_config(overrides=config.model_dump(mode="json") | network)
    states = [_State(1, "training", ["1"]), _State(2, "training", ["1"]), _State(2, "finished")]
    fake = FakeAggregator(states, global_weights)
    summary = _run(fake, dropping, dataset)
    assert fake.posts == []
    assert summary.rounds_skipped == 2
    assert summary.outcome == "finished"


def test_simulated_crash_abandons_the_round_and_rejoins_later(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    crashing = load_config(overrides=config.model_dump(mode="json") | {"network": [{"crash": 1.0}]})
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(2, "finished")], global_weights)
    sleeps = _Sleeps()
    summary = _run(fake, crashing, dataset, sleeps=sleeps)
    assert fake.posts == []
    assert summary.rounds_crashed == 1
    assert summary.outcome == "finished"
    assert len(sleeps.delays) == 1
    assert 1.0 <= sleeps.delays[0] <= 5.0  # the rejoin delay


def test_virtual_clients_share_the_dataset_and_all_post(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    states = [_State(1, "training", ["0", "1", "2"], wait_for_posts=True), _State(1, "finished")]
    fake = FakeAggregator(states, global_weights)
    settings = WorkerSettings(server_url="http://agg.test")
    summaries = run_virtual_clients(
        [0, 1, 2],
        settings,
        config,
        dataset=dataset,
        transport=httpx.MockTransport(fake.handler),
        sleep=_Sleeps(),
    )
    assert sorted(p["client_id"] for p in fake.posts) == ["0", "1", "2"]
    assert [s.client_id for s in summaries] == ["0", "1", "2"]
    assert [s.partition_id for s in summaries] == [0, 1, 2]
    assert all(s.outcome == "finished" and s.rounds_trained == 1 for s in summaries)
    assert sum(s.num_examples for s in summaries) == TRAIN_SIZE


def test_virtual_client_error_stops_the_others(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    fake = FakeAggregator([_State(1, "training", ["0"])], global_weights)  # "1" waits
    fake.reject, fake.reject_status = {"error": "unauthorized", "detail": "bad token"}, 401
    stop = threading.Event()
    with pytest.raises(FatalServerError, match="401"):
        run_virtual_clients(
            [0, 1],
            WorkerSettings(server_url="http://agg.test"),
            config,
            stop=stop,
            dataset=dataset,
            transport=httpx.MockTransport(fake.handler),
            sleep=_Sleeps(),
        )
    assert stop.is_set()


def test_without_an_etag_the_worker_pauses_instead_of_spinning(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    stop = threading.Event()
    fake = FakeAggregator([_State(1, "waiting")], global_weights)
    fake.send_etag = False
    fake.on_poll = lambda request: stop.set() if len(fake.polls) == 3 else None
    sleeps = _Sleeps()
    summary = _run(fake, config, dataset, stop=stop, sleeps=sleeps)
    assert summary.outcome == "stopped"
    assert sleeps.delays == [1.0, 1.0, 1.0]  # one pause after each answer
    assert all("If-None-Match" not in p.headers for p in fake.polls)


def test_unusable_round_config_is_a_config_error(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    fake = FakeAggregator([_State(1, "training", ["1"])], global_weights)
    fake.round_config = {"lr": -1.0}
    with pytest.raises(ConfigError, match="round 1: unusable training config: lr must be > 0"):
        _run(fake, config, dataset)


def test_activity_waits_for_busy_clients_only() -> None:
    activity = Activity()
    assert activity.wait_idle(timeout=0.0)
    release = threading.Event()

    def round_in_progress() -> None:
        with activity.busy():
            release.wait(5.0)

    thread = threading.Thread(target=round_in_progress)
    thread.start()
    try:
        assert not activity.wait_idle(timeout=0.05)
    finally:
        release.set()
        thread.join()
    assert activity.wait_idle(timeout=1.0)


def test_worker_summary_is_tracked_live(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    activity = Activity()
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    summary = run_worker(
        WorkerSettings(server_url="http://agg.test", client_id="1"),
        config,
        dataset=dataset,
        transport=httpx.MockTransport(fake.handler),
        sleep=_Sleeps(),
        activity=activity,
    )
    assert activity.summaries() == [summary]
    assert activity.wait_idle(timeout=0.0)


class _TrainingTracker:
    """Wraps `train`: counts the trainings running at once, each held for `hold_s` first;
    records per client thread when it got to train and how long the real `train` took."""

    def __init__(self, hold_s: float, barrier: threading.Barrier | None = None) -> None:
        self.hold_s = hold_s
        self.barrier = barrier
        self.running = 0
        self.peak = 0
        self.entered: dict[str, float] = {}
        self.inner_s: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        client = threading.current_thread().name.removeprefix("client-")
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.entered[client] = time.monotonic()
        try:
            if self.barrier is not None:
                self.barrier.wait()  # every client trains at the same time, or this times out
            time.sleep(self.hold_s)
            started = time.perf_counter()
            result = train(*args, **kwargs)
            self.inner_s[client] = time.perf_counter() - started
            return result
        finally:
            with self.lock:
                self.running -= 1


def _run_three(
    fake: FakeAggregator, config: ExperimentConfig, dataset: Dataset, **settings: Any
) -> list[Any]:
    return run_virtual_clients(
        [0, 1, 2],
        WorkerSettings(server_url="http://agg.test", **settings),
        config,
        dataset=dataset,
        transport=httpx.MockTransport(fake.handler),
        sleep=_Sleeps(),
    )


def test_one_training_slot_makes_virtual_clients_train_one_at_a_time(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracker = _TrainingTracker(hold_s=0.1)
    monkeypatch.setattr("client_worker.algorithms.local_round.train", tracker)
    states = [_State(1, "training", ["0", "1", "2"], wait_for_posts=True), _State(1, "finished")]
    fake = FakeAggregator(states, global_weights)
    summaries = _run_three(fake, config, dataset, train_slots=1)
    assert tracker.peak == 1
    assert sorted(p["client_id"] for p in fake.posts) == ["0", "1", "2"]
    assert all(s.rounds_trained == 1 for s in summaries)
    # Back to back: the last client got the slot two holds after the first one.
    entered = sorted(tracker.entered.values())
    assert entered[2] - entered[0] >= 2 * 0.1
    # What each client posts is the time of `train` alone, not its wait for the slot.
    for post in fake.posts:
        assert post["metrics"]["train_seconds"] <= tracker.inner_s[post["client_id"]]


def test_without_a_slot_limit_virtual_clients_train_together(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracker = _TrainingTracker(hold_s=0.0, barrier=threading.Barrier(3, timeout=10.0))
    monkeypatch.setattr("client_worker.algorithms.local_round.train", tracker)
    states = [_State(1, "training", ["0", "1", "2"], wait_for_posts=True), _State(1, "finished")]
    fake = FakeAggregator(states, global_weights)
    _run_three(fake, config, dataset)
    assert tracker.peak == 3
    assert len(fake.posts) == 3


def test_a_stop_reaches_a_client_waiting_for_a_training_slot(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stop, entered, release = threading.Event(), threading.Event(), threading.Event()
    holder: list[str] = []

    def blocking_train(*args: Any, **kwargs: Any) -> Any:
        holder.append(threading.current_thread().name.removeprefix("client-"))
        entered.set()
        release.wait(10.0)  # keeps the only slot until the test lets go
        return train(*args, **kwargs)  # the stop is set by then: interrupted at once

    monkeypatch.setattr("client_worker.algorithms.local_round.train", blocking_train)
    fake = FakeAggregator([_State(1, "training", ["0", "1"], wait_for_posts=True)], global_weights)
    activity = Activity()
    waiter_outcome: list[str] = []

    def stop_then_release() -> None:
        entered.wait(10.0)
        time.sleep(0.05)  # the other client is waiting for the slot by now
        stop.set()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            waiter = [s for s in activity.summaries() if s.client_id != holder[0]]
            if waiter and waiter[0].outcome != "running":
                waiter_outcome.append(waiter[0].outcome)
                break
            time.sleep(0.01)
        release.set()

    helper = threading.Thread(target=stop_then_release, daemon=True)
    helper.start()
    summaries = run_virtual_clients(
        [0, 1],
        WorkerSettings(server_url="http://agg.test", train_slots=1),
        config,
        stop=stop,
        dataset=dataset,
        transport=httpx.MockTransport(fake.handler),
        sleep=_Sleeps(),
        activity=activity,
    )
    helper.join(5.0)
    assert waiter_outcome == ["stopped"]  # ended while the slot was still taken
    assert len(holder) == 1  # the waiter never trained
    assert [s.outcome for s in summaries] == ["stopped", "stopped"]
    assert fake.posts == []


def test_virtual_clients_on_one_slot_share_two_modules_and_post_what_they_would_alone(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    real_build = build_model

    def counting_build(name: str, **kwargs: Any) -> Any:
        built.append(name)
        return real_build(name, **kwargs)

    monkeypatch.setattr(local_model, "build_model", counting_build)
    states = [_State(1, "training", ["0", "1", "2"], wait_for_posts=True), _State(1, "finished")]
    shared = FakeAggregator(states, global_weights)
    _run_three(shared, config, dataset, train_slots=1)
    assert len(built) <= 2  # 2 x train_slots modules for 3 clients
    for client_id in ("0", "1", "2"):
        alone = FakeAggregator(
            [_State(1, "training", [client_id]), _State(2, "finished")], global_weights
        )
        settings = WorkerSettings(server_url="http://agg.test", client_id=client_id)
        run_worker(
            settings,
            config,
            dataset=dataset,
            transport=httpx.MockTransport(alone.handler),
            sleep=_Sleeps(),
        )
        (mine,) = [p for p in shared.posts if p["client_id"] == client_id]
        theirs = decode_weights(alone.posts[0]["weights"])
        for name, array in decode_weights(mine["weights"]).items():
            np.testing.assert_array_equal(array, theirs[name], err_msg=f"{client_id}: {name}")
