"""Evaluate a classifier: mean cross-entropy loss and accuracy over a labelled set.

The batches go to the device of the model's parameters (CPU or a GPU); the sums stay on
that device until the end, so a GPU evaluation synchronises with the host once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from shared.batches import ImageBatches

__all__ = ["EvalResult", "evaluate"]


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy loss and accuracy in [0, 1] over `num_examples` examples."""

    loss: float
    accuracy: float
    num_examples: int


def evaluate(
    model: nn.Module,
    images: torch.Tensor | np.ndarray | ImageBatches,
    labels: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 1000,
) -> EvalResult:
    """Evaluate the model in eval mode without gradients; each module's mode is restored.

    `images` are float32 (N, C, H, W), as tensors or numpy arrays, or `ImageBatches` made
    float32 a batch at a time; `labels` are int64 (N,). Writable arrays are used without a
    copy, read-only ones are copied one batch at a time, and each batch is copied to the
    model's device when that is not the CPU.
    """
    num_examples = _check_inputs(images, labels, batch_size)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        loss_sum, correct = _sum_over_batches(model, images, labels, batch_size)
    finally:
        for module, training in modes.items():
            module.training = training
    return EvalResult(loss_sum / num_examples, correct / num_examples, num_examples)


def _check_inputs(
    images: torch.Tensor | np.ndarray | ImageBatches,
    labels: torch.Tensor | np.ndarray,
    batch_size: int,
) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; they must match")
    if len(images) == 0:
        raise ValueError("cannot evaluate on an empty set: no images were given")
    return len(images)


@torch.no_grad()
def _sum_over_batches(
    model: nn.Module,
    images: torch.Tensor | np.ndarray | ImageBatches,
    labels: torch.Tensor | np.ndarray,
    batch_size: int,
) -> tuple[float, int]:
    """Return the summed cross-entropy loss and the number of correct predictions."""
    device = _model_device(model)
    if device.type == "cpu":
        loss_sum, correct = 0.0, 0
        for start in range(0, len(images), batch_size):
            x = _as_tensor(images[start : start + batch_size])  # (B, C, H, W)
            y = _as_tensor(labels[start : start + batch_size]).long()  # (B,)
            logits = model(x)  # (B, num_classes)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == y).sum().item())
        return loss_sum, correct
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    correct_total = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(images), batch_size):
        x = _as_tensor(images[start : start + batch_size]).to(device)  # (B, C, H, W)
        y = _as_tensor(labels[start : start + batch_size]).to(device).long()  # (B,)
        logits = model(x)  # (B, num_classes)
        loss_total += F.cross_entropy(logits, y, reduction="sum").double()
        correct_total += (logits.argmax(dim=1) == y).sum()
    return float(loss_total.cpu()), int(correct_total.cpu())


def _model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter or buffer (CPU if it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _as_tensor(batch: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Wrap a batch as a tensor: shared memory when possible, a copy if read-only."""
    if isinstance(batch, torch.Tensor):
        return batch
    if batch.flags.writeable:
        return torch.from_numpy(batch)
    return torch.tensor(batch)  # torch.from_numpy warns on read-only arrays
