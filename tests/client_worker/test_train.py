"""Tests of the local training loop: convergence, determinism, interruption, math."""

from __future__ import annotations

import functools
import threading
import time

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from client_worker.slots import SLOT_POLL_S, TrainingSlots
from client_worker.train import (
    TrainConfig,
    TrainingInterrupted,
    derive_seed,
    seeded_global_rng,
    train,
)
from shared.models import build_model


def _blobs(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well-separated Gaussian blobs as (N, 1, 2, 2) images and labels 0/1."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    centers = torch.where(labels[:, None] == 1, 3.0, -3.0)  # (N, 1)
    points = centers + 0.5 * torch.randn(n, 4, generator=gen)  # (N, 4)
    return points.reshape(n, 1, 2, 2), labels.long()


def _linear(seed: int = 0) -> nn.Module:
    with seeded_global_rng(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def _model(name: str) -> nn.Module:
    with seeded_global_rng(1):
        return build_model(name, in_channels=1, num_classes=2, image_size=2)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True)))


def test_loss_decreases_on_separable_data() -> None:
    images, labels = _blobs()
    model = _linear()
    with torch.no_grad():
        before = float(F.cross_entropy(model(images), labels))
    result = train(model, images, labels, TrainConfig(5, 8, lr=0.1), seed=0)
    with torch.no_grad():
        after = float(F.cross_entropy(model(images), labels))
    assert after < 0.5 * before
    assert result.train_loss < before
    assert result.num_examples == 64
    assert result.train_seconds > 0
    assert result.examples_per_second == pytest.approx(5 * 64 / result.train_seconds)


@pytest.mark.parametrize("name", ["mlp", "mlp-128"])
def test_same_seed_gives_identical_weights(name: str) -> None:
    images, labels = _blobs()
    first, second = _model(name), _model(name)
    config = TrainConfig(2, 8, lr=0.05, momentum=0.9)
    train(first, images, labels, config, seed=7)
    train(second, images, labels, config, seed=7)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["mlp", "mlp-128"])
def test_different_seeds_give_different_weights(name: str) -> None:
    images, labels = _blobs()
    first, second = _model(name), _model(name)
    config = TrainConfig(1, 8, lr=0.05)
    train(first, images, labels, config, seed=1)
    train(second, images, labels, config, seed=2)
    assert _distance(_params(first), _params(second)) > 1e-8


def test_dropout_model_leaves_global_rng_untouched() -> None:
    images, labels = _blobs()
    before = torch.get_rng_state()
    train(_model("mlp-128"), images, labels, TrainConfig(1, 8, lr=0.05), seed=3)
    assert torch.equal(torch.get_rng_state(), before)


def test_dropout_is_active_during_training() -> None:
    # With dropout 0.2 a seeded run differs from the same run with dropout disabled.
    images, labels = _blobs()
    with_dropout, without = _model("mlp-128"), _model("mlp-128")
    for module in without.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    config = TrainConfig(1, 64, lr=0.1)
    train(with_dropout, images, labels, config, seed=0)
    train(without, images, labels, config, seed=0)
    assert _distance(_params(with_dropout), _params(without)) > 1e-10


def test_stop_set_before_training_interrupts_at_once() -> None:
    images, labels = _blobs()
    model = _linear()
    before = _params(model)
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingInterrupted) as info:
        train(model, images, labels, TrainConfig(1, 8, lr=0.1), seed=0, stop=stop)
    assert info.value.batches_done == 0
    assert _distance(_params(model), before) == 0.0


class _StopAfter(nn.Module):
    """Wraps a model and sets `stop` during its `calls`-th forward pass."""

    def __init__(self, inner: nn.Module, stop: threading.Event, calls: int) -> None:
        super().__init__()
        self.inner, self.stop, self.calls, self.count = inner, stop, calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        if self.count == self.calls:
            self.stop.set()
        out: torch.Tensor = self.inner(x)
        return out


def test_stop_set_mid_training_abandons_between_batches() -> None:
    images, labels = _blobs()
    stop = threading.Event()
    model = _StopAfter(_linear(), stop, calls=3)
    with pytest.raises(TrainingInterrupted) as info:
        train(model, images, labels, TrainConfig(2, 8, lr=0.1), seed=0, stop=stop)
    assert info.value.batches_done == 3  # the third batch completed, the fourth never started


def test_max_batches_interrupts_after_that_many_steps() -> None:
    images, labels = _blobs()
    with pytest.raises(TrainingInterrupted) as info:
        train(_linear(), images, labels, TrainConfig(2, 8, lr=0.1), seed=0, max_batches=5)
    assert info.value.batches_done == 5


def _gd_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float, extra: float = 0.0
) -> tuple[list[torch.Tensor], float]:
    """One independent full-batch gradient step; `extra` adds weight decay (extra * w)."""
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    weight, bias = params
    logits = images.reshape(len(images), -1) @ weight.T + bias  # (N, 2)
    loss = F.cross_entropy(logits, labels)  # mean over all N examples
    grads = torch.autograd.grad(loss, params)
    stepped = [(p - lr * (g + extra * p)).detach() for p, g in zip(params, grads, strict=True)]
    return stepped, float(loss.detach())


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_full_batch_epoch_is_one_gradient_descent_step(weight_decay: float) -> None:
    images, labels = _blobs(n=20)
    model = _linear(seed=4)
    expected, loss_before = _gd_step(model, images, labels, lr=0.3, extra=weight_decay)
    config = TrainConfig(1, batch_size=20, lr=0.3, weight_decay=weight_decay)
    result = train(model, images, labels, config, seed=9)
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert result.train_loss == pytest.approx(loss_before, rel=1e-5)  # loss of the one batch


def test_train_config_from_round_config_ignores_other_keys() -> None:
    round_config = {"model": "mlp", "dataset": "mnist5k", "local_epochs": 2, "batch_size": 16}
    round_config |= {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.001, "mu": 0.01, "seed": 3}
    config = TrainConfig.from_round_config(round_config)
    assert config == TrainConfig(2, 16, lr=0.1, momentum=0.5, weight_decay=0.001)


def test_train_config_rejects_missing_and_invalid_values() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig.from_round_config({"local_epochs": 1, "lr": 0.1})
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(1, 8, lr=0.0)


def test_train_rejects_empty_or_mismatched_data() -> None:
    with pytest.raises(ValueError, match="empty"):
        train(
            _linear(),
            torch.zeros(0, 1, 2, 2),
            torch.zeros(0).long(),
            TrainConfig(1, 8, 0.1),
            seed=0,
        )
    with pytest.raises(ValueError, match="first dimension"):
        train(
            _linear(),
            torch.zeros(3, 1, 2, 2),
            torch.zeros(2).long(),
            TrainConfig(1, 8, 0.1),
            seed=0,
        )


def test_derive_seed_is_stable_and_distinguishes_inputs() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, pid, rnd) for pid in range(5) for rnd in range(5)}) == 25
    assert 0 <= derive_seed(123) < 2**32


# -------------------------------------------------------------------- CPU time and slots


class _Sleepy(nn.Module):
    """Wraps a model and sleeps in every forward pass: wall time without CPU time."""

    def __init__(self, inner: nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        out: torch.Tensor = self.inner(x)
        return out


def test_train_cpu_seconds_count_the_thread_cpu_not_the_wall_time() -> None:
    images, labels = _blobs(32)
    result = train(_Sleepy(_linear(), 0.02), images, labels, TrainConfig(1, 8, lr=0.1), seed=0)
    assert result.train_seconds >= 4 * 0.02  # four batches, each sleeping 20 ms
    assert 0.0 < result.train_cpu_seconds < 0.5 * result.train_seconds


def test_train_cpu_seconds_stay_within_the_wall_time() -> None:
    images, labels = _blobs()
    result = train(_linear(), images, labels, TrainConfig(3, 8, lr=0.1), seed=0)
    assert 0.0 < result.train_cpu_seconds <= result.train_seconds + 0.01


def test_training_slots_run_at_most_that_many_at_once_first_come_first_served() -> None:
    slots = TrainingSlots(2)
    inside: list[int] = []
    peak: list[int] = []
    started: list[int] = []
    lock = threading.Lock()
    release = threading.Event()

    def work(index: int) -> int:
        with lock:
            started.append(index)
            inside.append(index)
            peak.append(len(inside))
        release.wait(5.0)
        with lock:
            inside.remove(index)
        return index

    results: list[int] = []

    def client(index: int) -> None:
        results.append(slots.run(functools.partial(work, index)))

    threads = []
    for index in range(5):  # one after the other, so the queue order is known
        thread = threading.Thread(target=client, args=(index,))
        thread.start()
        threads.append(thread)
        # wait until this client's training runs (the first two) or is queued (the rest)
        deadline = time.monotonic() + 5.0
        while not _running_or_queued(slots, started, index) and time.monotonic() < deadline:
            time.sleep(0.005)
    time.sleep(0.05)  # a third training would have started by now if it could
    assert sorted(started) == [0, 1]  # the other three wait for a slot
    release.set()
    for thread in threads:
        thread.join(5.0)
    assert max(peak) == 2
    assert started == [0, 1, 2, 3, 4]
    assert sorted(results) == [0, 1, 2, 3, 4]


def _running_or_queued(slots: TrainingSlots, started: list[int], index: int) -> bool:
    """Whether training `index` (submitted in order 0, 1, ...) has started or is queued."""
    assert slots._threads is not None
    queued = slots._threads._work_queue.qsize()
    return index in started if index < 2 else queued >= index - 1


def test_waiting_for_a_slot_ends_on_stop_without_training() -> None:
    slots = TrainingSlots(1)
    stop = threading.Event()
    busy = threading.Event()
    release = threading.Event()
    outcome: list[TrainingInterrupted] = []

    def occupy() -> None:
        busy.set()
        release.wait(5.0)

    def never() -> None:
        pytest.fail("the waiting work should never run")

    def waiter() -> None:
        try:
            slots.run(never, stop)
        except TrainingInterrupted as exc:
            outcome.append(exc)

    holder = threading.Thread(target=slots.run, args=(occupy,))
    holder.start()
    assert busy.wait(5.0)
    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    assert thread.is_alive()  # waiting
    stopped_at = time.monotonic()
    stop.set()
    thread.join(5.0)
    assert time.monotonic() - stopped_at < 5 * SLOT_POLL_S
    release.set()
    holder.join(5.0)
    assert [exc.batches_done for exc in outcome] == [0]


def test_a_running_training_sees_the_stop_itself() -> None:
    slots = TrainingSlots(1)
    stop = threading.Event()
    running = threading.Event()

    def work() -> str:
        running.set()
        while not stop.wait(0.01):
            pass
        raise TrainingInterrupted(3)

    def stopper() -> None:
        assert running.wait(5.0)
        stop.set()

    helper = threading.Thread(target=stopper)
    helper.start()
    with pytest.raises(TrainingInterrupted) as caught:
        slots.run(work, stop)
    helper.join(5.0)
    assert caught.value.batches_done == 3


def test_no_slot_limit_runs_on_the_callers_thread_and_zero_slots_are_refused() -> None:
    slots = TrainingSlots(None)
    assert slots.run(threading.get_ident) == threading.get_ident()
    with pytest.raises(ValueError, match="train_slots must be at least 1"):
        TrainingSlots(0)


def test_trainings_run_on_the_slots_own_threads_under_the_callers_names() -> None:
    slots = TrainingSlots(2)
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()

    def work() -> int:
        with lock:
            seen.append((threading.get_ident(), threading.current_thread().name))
        time.sleep(0.01)
        return 7

    results: list[int] = []
    clients = [
        threading.Thread(target=lambda: results.append(slots.run(work)), name=f"client-{i}")
        for i in range(6)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(10.0)
    assert results == [7] * 6
    assert len({ident for ident, _ in seen}) <= 2  # two slots: at most two training threads
    assert sorted(name for _, name in seen) == [f"client-{i}" for i in range(6)]
    assert {ident for ident, _ in seen}.isdisjoint(c.ident for c in clients)


def test_without_a_slot_limit_training_runs_on_the_callers_thread() -> None:
    slots = TrainingSlots(None)
    assert slots.run(threading.get_ident) == threading.get_ident()
