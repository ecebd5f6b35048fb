"""Local training: E epochs of mini-batch SGD on one client's data, with algorithm hooks.

The loop is plain PyTorch and deterministic for a given seed: the batch order comes from
a seeded `torch.Generator`, and a model that draws from torch's process-wide generator
(dropout) trains inside a forked, seeded copy of it, so the caller's RNG state is left
as it was. A client algorithm (client_worker.algorithms: FedProx, ...) joins the loop
through `TrainingHooks`: a term added to each step's loss and a transform of the gradients
before the optimizer step. A `DevicePlan` (client_worker.device) says where and in which
precision it trains; on the CPU in fp32 (the default) the loop is the plain one. With a
`DpSgd` (client_worker.dp_sgd) the batches are Poisson-sampled and each step clips and
noises every example's gradient.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from client_worker.batches import BatchSource
from client_worker.device import DevicePlan
from shared.batches import Images
from shared.models import freeze_norm_statistics, set_trainable

if TYPE_CHECKING:  # Opacus takes seconds to import: only DP-SGD rounds load it
    from client_worker.dp_sgd import DpSgd

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingHooks",
    "TrainingInterrupted",
    "derive_seed",
    "seeded_global_rng",
    "train",
]

# Modules whose forward pass draws from torch's process-wide generator.
_GLOBAL_RNG_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
# torch has one process-wide CPU generator: threads (virtual clients) that fork and seed
# it must take turns, or one thread's draws would land in another's stream.
_GLOBAL_RNG_LOCK = threading.Lock()
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, labels) -> batch loss


class TrainingInterrupted(Exception):
    """Training was abandoned between two batches (stop requested or simulated crash)."""

    def __init__(self, batches_done: int) -> None:
        super().__init__(f"training interrupted after {batches_done} batches")
        self.batches_done = batches_done


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings for one round (sent by the aggregator)."""

    local_epochs: int  # E: passes over the local data per round
    batch_size: int  # B: examples per SGD step; the last batch of an epoch may be smaller
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0  # L2 penalty applied by torch.optim.SGD
    trainable: tuple[str, ...] = ()  # name patterns of what trains (shared/models); () = all

    def __post_init__(self) -> None:
        if self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"local_epochs ({self.local_epochs}) and batch_size ({self.batch_size}) "
                "must be at least 1"
            )
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(
                f"lr must be > 0 and momentum, weight_decay >= 0; got lr={self.lr}, "
                f"momentum={self.momentum}, weight_decay={self.weight_decay}"
            )

    @classmethod
    def from_round_config(cls, config: Mapping[str, Any]) -> TrainConfig:
        """Build from the round config dict the aggregator sends (extra keys ignored)."""
        try:
            return cls(
                local_epochs=int(config["local_epochs"]),
                batch_size=int(config["batch_size"]),
                lr=float(config["lr"]),
                momentum=float(config.get("momentum", 0.0)),
                weight_decay=float(config.get("weight_decay", 0.0)),
                trainable=tuple(config.get("trainable") or ()),
            )
        except KeyError as exc:
            raise ValueError(f"round config lacks the training setting {exc.args[0]!r}") from None


@dataclass(frozen=True)
class TrainResult:
    """What one call of `train` did."""

    num_examples: int  # size of the local data set (the FedAvg weight)
    train_loss: float  # mean cross-entropy over the examples of the LAST epoch (no extra loss)
    num_steps: int  # optimizer steps taken (batches over all epochs)
    train_seconds: float  # wall time of the training loop
    train_cpu_seconds: float  # CPU time of the training thread over the same loop
    examples_per_second: float  # examples processed over all epochs / train_seconds
    gpu_peak_mb: float | None = None  # CUDA: the device's peak allocated MiB (None on CPU)


class TrainingHooks(Protocol):
    """What a client algorithm adds to each training step."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Return a term added to this step's loss before backward (None: nothing)."""
        ...

    def transform_gradients(self, model: nn.Module) -> None:
        """Change the parameters' `.grad` in place, after backward and before the step."""
        ...

    def after_step(self, model: nn.Module) -> None:
        """Change the parameters in place after the optimizer's step."""
        ...


class _NoHooks:
    """Plain local training: no extra loss, gradients unchanged."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def transform_gradients(self, model: nn.Module) -> None:
        return None

    def after_step(self, model: nn.Module) -> None:
        return None


_NO_HOOKS = _NoHooks()


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the body with torch's generator (CPU, and `device`'s on CUDA) forked and seeded."""
    devices = []
    if device is not None and device.type == "cuda":
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def derive_seed(*entropy: int) -> int:
    """Mix integers (seed, partition_id, server_round, ...) into one 32-bit seed."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def train(
    model: nn.Module,
    images: Images,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    stop: threading.Event | None = None,
    max_batches: int | None = None,
    hooks: TrainingHooks | None = None,
    plan: DevicePlan | None = None,
    dp: DpSgd | None = None,
) -> TrainResult:
    """Train `model` in place for E local epochs; deterministic for a given seed.

    `hooks` (a client algorithm) add a loss term and transform the gradients at each step.
    `plan` (default: CPU, fp32) moves the model to its device and sets the precision.
    `dp` trains with DP-SGD: Poisson-sampled batches, each example's gradient clipped, noise.
    `stop` set, or `max_batches` SGD steps done, abandons training between two batches
    with `TrainingInterrupted` (the model is then partly trained and should be discarded).
    """
    num_examples = _check_data(images, labels)
    plan = plan if plan is not None else DevicePlan()
    if plan.is_cuda:
        model.to(plan.device)
    uses_global_rng = any(isinstance(m, _GLOBAL_RNG_MODULES) for m in model.modules())
    guard = seeded_global_rng(seed, plan.device) if uses_global_rng else contextlib.nullcontext()
    plan.reset_peak_memory()
    start, start_cpu = time.perf_counter(), time.thread_time()
    hooks = hooks if hooks is not None else _NO_HOOKS
    with guard:
        # a Poisson-sampled batch may hold up to every example
        source = BatchSource(
            images, labels, plan, num_examples if dp is not None else config.batch_size
        )
        train_loss, steps = _run_epochs(
            model, source, config, seed, stop, max_batches, hooks, plan, dp
        )
    seconds = time.perf_counter() - start
    cpu_seconds = time.thread_time() - start_cpu  # this thread only: not other clients'
    seen = num_examples * config.local_epochs
    return TrainResult(
        num_examples=num_examples,
        train_loss=train_loss,
        num_steps=steps,
        train_seconds=seconds,
        train_cpu_seconds=cpu_seconds,
        examples_per_second=seen / seconds if seconds > 0 else 0.0,
        gpu_peak_mb=plan.peak_memory_mb(),
    )


def _check_data(images: Images, labels: torch.Tensor) -> int:
    if images.ndim < 2 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images {tuple(images.shape)} and labels {tuple(labels.shape)} must have the "
            "same first dimension (images (N, ...), labels (N,))"
        )
    if labels.shape[0] == 0:
        raise ValueError("cannot train on an empty data set (0 examples)")
    return int(labels.shape[0])


def _run_epochs(
    model: nn.Module,
    source: BatchSource,
    config: TrainConfig,
    seed: int,
    stop: threading.Event | None,
    max_batches: int | None,
    hooks: TrainingHooks,
    plan: DevicePlan,
    dp: DpSgd | None,
) -> tuple[float, int]:
    """Run the SGD epochs; return the mean loss of the last one and the steps taken."""
    generator = torch.Generator().manual_seed(seed)
    trains = set_trainable(model, config.trainable)  # frozen parameters get no gradient
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    num_examples = source.labels.shape[0]
    batches_done = 0
    epoch_loss, epoch_examples = torch.zeros((), device=plan.device), 0
    model.train()
    if config.trainable:  # frozen BatchNorm layers keep their statistics too
        freeze_norm_statistics(model, trains)
    try:
        with _stepping(model, optimizer, config, hooks, plan, dp, seed) as step:
            for _epoch in range(config.local_epochs):
                epoch_loss, epoch_examples = torch.zeros((), device=plan.device), 0
                for batch in _epoch_batches(num_examples, config.batch_size, generator, dp):
                    if (stop is not None and stop.is_set()) or batches_done == max_batches:
                        raise TrainingInterrupted(batches_done)
                    loss = step(*source.batch(batch))
                    epoch_loss += loss * batch.numel()
                    epoch_examples += batch.numel()
                    batches_done += 1
    finally:
        optimizer.zero_grad(set_to_none=True)  # gradients, as large as the model, are not kept
    return float(epoch_loss) / max(epoch_examples, 1), batches_done


def _epoch_batches(
    num_examples: int, batch_size: int, generator: torch.Generator, dp: DpSgd | None
) -> Iterator[torch.Tensor]:
    """Yield one epoch's batches of example ids: a shuffle cut in B, or Poisson samples."""
    if dp is not None:
        from client_worker.dp_sgd import poisson_batches

        yield from poisson_batches(num_examples, batch_size, generator)
        return
    order = torch.randperm(num_examples, generator=generator)
    for first in range(0, num_examples, batch_size):
        yield order[first : first + batch_size]


@contextlib.contextmanager
def _stepping(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    hooks: TrainingHooks,
    plan: DevicePlan,
    dp: DpSgd | None,
    seed: int,
) -> Iterator[Step]:
    """Yield the function that takes one optimizer step: plain SGD, or DP-SGD's."""
    if dp is None:
        scaler = plan.grad_scaler()
        yield functools.partial(_step, model, optimizer, hooks=hooks, plan=plan, scaler=scaler)
        return
    from client_worker.dp_sgd import private_steps

    steps = private_steps(
        model, optimizer, dp, batch_size=config.batch_size, hooks=hooks, plan=plan, seed=seed
    )
    with steps as step:
        yield step


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,  # (B, C, H, W)
    labels: torch.Tensor,  # (B,)
    *,
    hooks: TrainingHooks,
    plan: DevicePlan,
    scaler: torch.amp.GradScaler | None,
) -> torch.Tensor:
    """Take one SGD step and return the batch's mean cross-entropy (detached)."""
    optimizer.zero_grad(set_to_none=True)
    with plan.autocast():
        loss = F.cross_entropy(model(images), labels)
    extra = hooks.extra_loss(model)
    total = loss if extra is None else loss + extra
    if scaler is None:
        torch.autograd.backward(total)
        hooks.transform_gradients(model)
        optimizer.step()
        hooks.after_step(model)
        return loss.detach()
    torch.autograd.backward(scaler.scale(total))
    scaler.unscale_(optimizer)  # the hooks see the true gradients
    hooks.transform_gradients(model)
    scaler.step(optimizer)  # skipped when a gradient overflowed in fp16
    scaler.update()
    hooks.after_step(model)
    return loss.detach()
