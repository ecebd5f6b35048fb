"""Sample-level DP-SGD in local training, through Opacus's public API.

Abadi et al. 2016 (https://arxiv.org/abs/1607.00133), Algorithm 1. Each step's batch is
Poisson-sampled (every example joins with probability q = batch_size / num_examples, on
its own), which is what the RDP accountant's subsampled-Gaussian analysis assumes
(Mironov et al. 2019, https://arxiv.org/abs/1908.10530). `opacus.GradSampleModule`
computes every example's gradient; `opacus.optimizers.DPOptimizer` clips each to
`max_grad_norm` (C), sums them, adds N(0, (sigma * C)^2) per coordinate and divides by
the expected batch size. A client algorithm's extra loss (FedProx's proximal term) is a
function of the weights alone: its gradient is added after the noise, as post-processing
that costs no privacy, and is not clipped. Its gradient transform and after-step change
act on the privatized gradients and weights, post-processing too.

The batches and the noise come from seeded `torch.Generator`s, so a training is
bit-identical for a given seed. The aggregator knows the experiment seed, and noise it
could regenerate would hide nothing: the worker mixes a secret key of the client, kept in
its state dir and never sent, into the seed of a DP-SGD training (`private_seed`). Opacus's
`secure_mode` (needs torchcsprng) is not used: the generators are seeded with 64 bits and
are not cryptographically secure, and floating-point attacks on Gaussian sampling
(https://arxiv.org/abs/2107.10138) are not defended against (docs/privacy.md).

Importing Opacus costs seconds: the worker imports this module only for DP-SGD rounds.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from client_worker.device import DevicePlan
from client_worker.train import TrainingHooks
from shared.errors import ConfigError

__all__ = [
    "DpSgd",
    "PrivateStep",
    "check_model",
    "poisson_batches",
    "private_seed",
    "private_steps",
    "steps_per_round",
]

# Opacus hooks every layer with a full backward hook; torch warns on each backward that the
# first layer's input (the images) needs no gradient. Expected, and harmless: the hook
# gets the gradient of the layer's output, which is all per-sample gradients need.
warnings.filterwarnings(
    "ignore",
    message="Full backward hook is firing when gradients are computed with respect to "
    "module outputs since no inputs require gradients",
    category=UserWarning,
)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
PrivateStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_NOISE_STREAM = 1  # seed64(seed, 1): the noise's generator, apart from the sampling's


@dataclass(frozen=True)
class DpSgd:
    """A round's DP-SGD settings, from the round config's "dp_sgd"."""

    noise_multiplier: float  # sigma
    max_grad_norm: float  # C
    delta: float
    target_epsilon: float | None = None

    @classmethod
    def from_round_config(cls, config: Mapping[str, Any]) -> DpSgd | None:
        """Return the settings of the round config's "dp_sgd" (None: no DP-SGD)."""
        section = config.get("dp_sgd")
        if section is None:
            return None
        try:
            target = section.get("target_epsilon")
            dp = cls(
                noise_multiplier=float(section["noise_multiplier"]),
                max_grad_norm=float(section["max_grad_norm"]),
                delta=float(section["delta"]),
                target_epsilon=None if target is None else float(target),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the round config's dp_sgd {section!r} is unusable: {exc}") from None
        if not (dp.noise_multiplier >= 0 and dp.max_grad_norm > 0 and 0 < dp.delta < 1):
            raise ConfigError(f"the round config's dp_sgd {section!r} is out of range")
        return dp

    def sample_rate(self, num_examples: int, batch_size: int) -> float:
        """Return q = batch_size / num_examples; refuse data too small for the guarantee."""
        if num_examples <= batch_size:
            raise ConfigError(
                f"DP-SGD samples each example with probability batch_size / num_examples: "
                f"batch_size ({batch_size}) must be below this client's {num_examples} "
                "examples (a smaller batch_size, or fewer, larger clients)"
            )
        if self.delta >= 1 / num_examples:
            raise ConfigError(
                f"dp_sgd.delta ({self.delta:g}) must be below 1 / num_examples "
                f"(1/{num_examples} = {1 / num_examples:.3g} for this client): with delta "
                "that large the guarantee allows leaking an example outright"
            )
        return batch_size / num_examples


def _seed64(*entropy: int) -> int:
    """Mix integers of any size into one 64-bit seed (what torch.Generator takes at most)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0])


def private_seed(seed: int, key: bytes) -> int:
    """Return the seed of a DP-SGD training: the training seed mixed with the client's key.

    Without `key` the batches and the noise would follow from the experiment seed, which
    the aggregator sends; with it they follow from a secret only the client holds.
    """
    return _seed64(seed, int.from_bytes(key, "little"))


def steps_per_round(num_examples: int, batch_size: int, local_epochs: int) -> int:
    """Return the steps of a round: ceil(n / B) per epoch, as without DP-SGD."""
    return math.ceil(num_examples / batch_size) * local_epochs


def poisson_batches(
    num_examples: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield one epoch of Poisson-sampled batches: ceil(n / B) steps, each example with q."""
    sample_rate = batch_size / num_examples
    for _ in range(math.ceil(num_examples / batch_size)):
        chosen = torch.rand(num_examples, generator=generator) < sample_rate  # (N,)
        yield chosen.nonzero().squeeze(1)


def check_model(model: nn.Module) -> None:
    """Raise ConfigError naming each layer Opacus cannot give per-sample gradients for."""
    problems = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their layers are checked one by one
        errors = ModuleValidator.validate(module, strict=False)
        if not errors:
            continue
        kind = type(module).__name__
        if isinstance(module, _BATCH_NORMS):
            why = "it normalizes each example by its batch, so no per-example gradient exists"
        else:
            why = str(errors[0]).split(". ")[0]
        problems.append(f"layer {name!r} ({kind}): {why}")
    if problems:
        raise ConfigError(
            "DP-SGD cannot train this model: "
            + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            + ". Use a model without BatchNorm (mlp, mlp-128, cnn, simple-cnn) or one "
            "with GroupNorm or LayerNorm in its place"
        )


@contextlib.contextmanager
def private_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dp: DpSgd,
    *,
    batch_size: int,
    hooks: TrainingHooks,
    plan: DevicePlan,
    seed: int,
) -> Iterator[PrivateStep]:
    """Wrap `model` and `optimizer` for DP-SGD; yield the step; unwrap `model` at the end."""
    if plan.precision != "fp32":
        raise ConfigError(
            f"DP-SGD trains in fp32 only (this worker: {plan.precision}): clipping and "
            "noise are calibrated on the full-precision per-example gradients"
        )
    check_model(model)
    try:
        sampled = GradSampleModule(model, loss_reduction="mean")
    except NotImplementedError as exc:
        raise ConfigError(f"DP-SGD cannot train this model: {exc}") from None
    noise = torch.Generator(device=plan.device).manual_seed(_seed64(seed, _NOISE_STREAM))
    private = DPOptimizer(
        optimizer,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=batch_size,
        loss_reduction="mean",
        generator=noise,
    )
    try:
        yield lambda images, labels: _step(sampled, model, private, images, labels, hooks)
    finally:
        private.zero_grad(set_to_none=True)  # per-sample gradients: batch x model
        sampled.to_standard_module()  # hooks removed: the module trains plainly again


def _step(
    sampled: GradSampleModule,
    model: nn.Module,
    optimizer: DPOptimizer,
    images: torch.Tensor,  # (B, C, H, W), B drawn by Poisson sampling (may be 0)
    labels: torch.Tensor,  # (B,)
    hooks: TrainingHooks,
) -> torch.Tensor:
    """Take one DP-SGD step and return the batch's mean cross-entropy (0 for no examples)."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(sampled(images), labels)  # NaN for an empty batch, unused then
    torch.autograd.backward(loss)  # every example's gradient, in p.grad_sample
    if not optimizer.pre_step():  # clip, sum, noise, / B: the private p.grad
        return loss.detach()
    extra = hooks.extra_loss(model)
    if extra is not None:  # a function of the weights alone: post-processing
        params = optimizer.params
        grads = torch.autograd.grad(extra, params, allow_unused=True)
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                if grad is not None and param.grad is not None:
                    param.grad.add_(grad)
    hooks.transform_gradients(model)
    optimizer.original_optimizer.step()
    hooks.after_step(model)
    if labels.numel() == 0:
        return torch.zeros((), device=labels.device)
    return loss.detach()
