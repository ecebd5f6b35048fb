"""One round of local training with a client algorithm's hooks, up to the update to send."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from client_worker.algorithms.base import ClientAlgorithm, Groups, RoundContext, Weights
from client_worker.device import DevicePlan
from client_worker.train import TrainConfig, TrainResult, train
from shared.batches import Images
from shared.errors import ConfigError
from shared.evaluation import EvalResult, evaluate
from shared.models import state_to_numpy, trainable_names

if TYPE_CHECKING:  # Opacus takes seconds to import: only DP-SGD rounds load it
    from client_worker.dp_sgd import DpSgd

__all__ = ["LocalUpdate", "check_update_groups", "train_round"]


@dataclass(frozen=True)
class LocalUpdate:
    """What a round's training produced: the result, the weights and groups to send."""

    result: TrainResult
    weights: Weights
    groups: Groups
    local_test: EvalResult | None = None  # the model at the round's start, held-out data
    privacy: Mapping[str, float] = field(default_factory=dict)  # DP-SGD: dp_epsilon, dp_delta

    def metrics(self) -> dict[str, float]:
        """Return what the update reports of its round: training measures, local test.

        A DP-SGD update reports its epsilon and delta instead of its training loss, a
        plain average over the very examples the noise protects.
        """
        result = self.result
        measured = {
            "train_loss": result.train_loss,
            "train_seconds": result.train_seconds,
            "train_cpu_seconds": result.train_cpu_seconds,
            "examples_per_second": result.examples_per_second,
        }
        if result.gpu_peak_mb is not None:
            measured["gpu_peak_mb"] = result.gpu_peak_mb
        if self.local_test is not None:
            measured["local_accuracy"] = self.local_test.accuracy
            measured["local_loss"] = self.local_test.loss
        if self.privacy:  # DP-SGD: the loss on the training examples is outside the guarantee
            del measured["train_loss"]
        return measured | dict(self.privacy)


def train_round(
    model: nn.Module,
    algorithm: ClientAlgorithm,
    context: RoundContext,
    images: Images,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    stop: threading.Event | None = None,
    max_batches: int | None = None,
    plan: DevicePlan | None = None,
    local_test: tuple[Images, torch.Tensor] | None = None,
    dp: DpSgd | None = None,
) -> LocalUpdate:
    """Train `model` (holding the global weights) through `algorithm`'s hooks on `plan`'s device.

    The weights sent are copied back to host memory when the model trained on a GPU.
    With `local_test`, the model as it stands before training is evaluated on it first.
    With `dp`, training is DP-SGD (the model is unwrapped after it: the names do not change).
    """
    if plan is not None and plan.is_cuda:
        model.to(plan.device)  # before the hooks, which may keep copies of the weights
    algorithm.before_training(model, context)
    # the model this client holds now: the global one, with its own tensors if personalized
    held_out = evaluate(model, *local_test) if local_test is not None else None
    result = train(
        model,
        images,
        labels,
        config,
        seed=seed,
        stop=stop,
        max_batches=max_batches,
        hooks=algorithm,
        plan=plan,
        dp=dp,
    )
    weights = algorithm.after_training(state_to_numpy(model), result)
    if config.trainable:  # frozen tensors are not sent: the server keeps them as they were
        trains = set(trainable_names(model, config.trainable))
        weights = {name: array for name, array in weights.items() if name in trains}
    groups = algorithm.groups_to_send()
    check_update_groups(context, algorithm, groups)
    return LocalUpdate(result, weights, groups, held_out)


def check_update_groups(context: RoundContext, algorithm: ClientAlgorithm, groups: Groups) -> None:
    """Raise unless `groups` are exactly the groups the round config asks an update for."""
    expected, sent = sorted(context.update_groups), sorted(groups)
    if expected != sent:
        raise ConfigError(
            f"round {context.server_round}: the round config asks updates for the groups "
            f"{expected} but the client algorithm {algorithm.name!r} sends {sent}"
        )
