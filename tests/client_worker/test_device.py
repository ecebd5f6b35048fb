"""Tests of device resolution, precision and the GPU guards, all on the CPU."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import ValidationError

from aggregator_service.settings import AggregatorSettings
from client_worker import batches
from client_worker.batches import BatchSource
from client_worker.device import DevicePlan, GpuGate, free_device_memory
from client_worker.settings import WorkerSettings
from client_worker.train import TrainConfig, seeded_global_rng, train
from shared.device import resolve_device
from shared.errors import ConfigError
from shared.models import build_model

# sha256 of the state trained by `_train_digest`, computed before devices and precisions
# were added to the training loop: fp32 on the CPU must stay bit-identical to it.
FP32_DIGESTS = {
    "mlp": "9f3ca608b873543cfc73e8df9c95f82ae876b653772d9e5929ab56adf11a516b",
    "cnn": "e0bb3211a4231d9044a36cdc649ccf7a0acd318cb4122462f0c106f2a58f3151",  # dropout
}
FP32_LOSSES = {
    "mlp": float.fromhex("0x1.e1461cccccccdp-1"),
    "cnn": float.fromhex("0x1.14eb533333333p+0"),
}


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, available: bool, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def _train_digest(name: str, plan: DevicePlan | None = None) -> tuple[str, float]:
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(40, 1, 8, 8, generator=gen)
    labels = torch.arange(40) % 3
    with seeded_global_rng(1):
        model = build_model(name, in_channels=1, num_classes=3, image_size=8)
    config = TrainConfig(2, 8, lr=0.05, momentum=0.9, weight_decay=1e-4)
    result = train(model, images, labels, config, seed=11, plan=plan)
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest(), result.train_loss


def test_auto_is_the_gpu_when_cuda_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, True, 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_the_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, False, 0)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_asked_without_cuda_is_an_error_naming_the_device(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _fake_cuda(monkeypatch, False, 0)
    with pytest.raises(ConfigError, match=f"device '{name}'.*CUDA is not available"):
        resolve_device(name)


def test_a_cuda_index_beyond_the_devices_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, True, 2)
    with pytest.raises(ConfigError, match=r"'cuda:2'.*2 CUDA device\(s\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "mps"])
def test_device_names_are_checked_in_both_settings(name: str) -> None:
    with pytest.raises(ValidationError, match="auto, cpu, cuda, cuda:N"):
        WorkerSettings(device=name)
    with pytest.raises(ValidationError, match="auto, cpu, cuda, cuda:N"):
        AggregatorSettings(eval_device=name)


def test_settings_give_the_device_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, False, 0)
    monkeypatch.setenv("TRIBUTARY_WORKER_PRECISION", "bf16")
    plan = WorkerSettings(device_data_budget_mb=2).device_plan()
    assert plan == DevicePlan(torch.device("cpu"), "bf16", 2 << 20)
    with pytest.raises(ConfigError, match="'cuda'"):
        WorkerSettings(device="cuda").device_plan()


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        DevicePlan(torch.device("cpu"), "fp16")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_fp32_on_the_cpu_is_bit_identical_to_before(name: str) -> None:
    assert _train_digest(name) == (FP32_DIGESTS[name], FP32_LOSSES[name])
    assert _train_digest(name, DevicePlan()) == (FP32_DIGESTS[name], FP32_LOSSES[name])


def test_bf16_training_on_the_cpu_lowers_the_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.where(labels[:, None] == 1, 2.0, -2.0) + torch.randn(64, 16, generator=gen)
    images = images.reshape(64, 1, 4, 4)
    with seeded_global_rng(0):
        model = build_model("mlp", in_channels=1, num_classes=2, image_size=4)
    with torch.no_grad():
        before = float(F.cross_entropy(model(images), labels))
    plan = DevicePlan(torch.device("cpu"), "bf16")
    result = train(model, images, labels, TrainConfig(5, 8, lr=0.1), seed=0, plan=plan)
    with torch.no_grad():
        after = float(F.cross_entropy(model(images), labels))
    assert after < 0.5 * before
    assert result.train_loss < before
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast
    assert result.gpu_peak_mb is None  # no GPU, no figure


def test_bf16_autocast_computes_in_bf16_on_the_cpu() -> None:
    layer = torch.nn.Linear(4, 2)
    with DevicePlan(torch.device("cpu"), "bf16").autocast():
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    assert DevicePlan(torch.device("cpu"), "bf16").grad_scaler() is None


def test_on_the_cpu_the_gpu_guards_do_nothing() -> None:
    plan = DevicePlan()
    plan.reset_peak_memory()
    assert plan.peak_memory_mb() is None
    assert GpuGate(plan, "streams").run(lambda: 7) == 7
    free_device_memory(plan.device)  # gc only
    images, labels = torch.randn(5, 1, 2, 2), torch.arange(5)
    source = BatchSource(images, labels, DevicePlan(data_budget_bytes=1 << 30), 2)
    assert not source.on_device
    assert source.images is images
    x, y = source.batch(torch.tensor([4, 1]))
    assert torch.equal(x, images[[4, 1]])
    assert torch.equal(y, labels[[4, 1]])


def test_the_server_evaluator_refuses_a_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from aggregator_service.federation.evaluation import ServerEvaluator
    from shared.config import load_config

    _fake_cuda(monkeypatch, False, 0)
    with pytest.raises(ConfigError, match="'cuda:0'"):
        ServerEvaluator(load_config(overrides={"dataset": "synthetic"}), "cuda:0")


class _FakeEvent:
    """Stands in for torch.cuda.Event: counts the waits for a copy to end."""

    def __init__(self) -> None:
        self.waits = 0

    def record(self) -> None:
        return None

    def synchronize(self) -> None:
        self.waits += 1


def _as_if_on_cuda(monkeypatch: pytest.MonkeyPatch) -> list[_FakeEvent]:
    """Make a CPU plan take the CUDA branches of BatchSource (unpinned buffers, fake events)."""
    events: list[_FakeEvent] = []

    def event() -> _FakeEvent:
        events.append(_FakeEvent())
        return events[-1]

    def host_pair(images: torch.Tensor, labels: torch.Tensor, rows: int) -> Any:
        return torch.empty((rows, *images.shape[1:])), torch.empty(rows, dtype=labels.dtype), None

    monkeypatch.setattr(DevicePlan, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch.cuda, "Event", event)
    monkeypatch.setattr(batches, "_pinned_pair", host_pair)
    return events


@pytest.mark.parametrize("budget", [0, 1 << 20])
def test_batches_through_the_device_paths_are_the_examples_asked_for(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    events = _as_if_on_cuda(monkeypatch)
    images, labels = torch.randn(10, 1, 2, 2), torch.arange(10)
    source = BatchSource(images, labels, DevicePlan(data_budget_bytes=budget), 4)
    assert source.on_device == (budget > 0)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    for first in range(0, 10, 4):  # batches of 4, 4, 2
        ids = order[first : first + 4]
        x, y = source.batch(ids)
        assert torch.equal(x, images[ids])
        assert torch.equal(y, labels[ids])
    # Through the host buffers: the first one's copy is awaited before its second batch.
    assert [e.waits for e in events] == ([] if budget else [1, 0, 0])


def test_sequential_sharing_trains_one_client_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DevicePlan, "is_cuda", property(lambda self: True))
    gate = GpuGate(DevicePlan(), "sequential")
    running, most = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    threads = [threading.Thread(target=gate.run, args=(work,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == [1]
