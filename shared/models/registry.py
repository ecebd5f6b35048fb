"""The model registry: names to builders, and the seeded initial global state."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from shared.errors import ModelError
from shared.models import small, zoo
from shared.models.freezing import trainable_names
from shared.models.pretrained import load_pretrained
from shared.models.state import state_to_numpy

__all__ = ["MODEL_NAMES", "build_model", "init_global_weights"]

Builder = Callable[[int, int, int], nn.Module]  # (in_channels, num_classes, image_size)

_BUILDERS: dict[str, Builder] = {
    "mlp": small.mlp,
    "mlp-128": small.mlp_128,
    "cnn": small.mnist_cnn,
    "simple-cnn": small.simple_cnn,
    "simple-cnn-bn": small.simple_cnn_bn,
    "resnet18": zoo.resnet18,
    "resnet18-imagenet": zoo.resnet18_imagenet,
    "resnet34": zoo.resnet34,
    "resnet34-imagenet": zoo.resnet34_imagenet,
    "resnet50": zoo.resnet50,
    "resnet50-imagenet": zoo.resnet50_imagenet,
    "mobilenet-v3-small": zoo.mobilenet_v3_small,
    "mobilenet-v3-large": zoo.mobilenet_v3_large,
    "efficientnet-b0": zoo.efficientnet_b0,
    "vit-b-16": zoo.vit_b_16,
    "vit-tiny": zoo.vit_tiny,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the registered model `name` for images of the given channels and size."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return builder(in_channels, num_classes, image_size)


def init_global_weights(
    name: str,
    *,
    seed: int,
    in_channels: int,
    num_classes: int,
    image_size: int,
    pretrained: str | None = None,
    trainable: Sequence[str] = (),
    allow_download: bool = False,
) -> dict[str, np.ndarray]:
    """Return the seeded initial global state: the same for a seed on every machine.

    With `pretrained`, its tensors replace the fresh ones wherever the shapes agree
    (shared/models/pretrained.py). The `trainable` patterns are checked against the model,
    so a pattern that matches nothing fails here, before any round.

    torch's layer initialisers draw from the process-wide generator; it is forked here, so
    the caller's RNG state is left as it was. Not safe against other threads drawing from
    that generator at the same moment.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            name, in_channels=in_channels, num_classes=num_classes, image_size=image_size
        )
    if pretrained is not None:
        load_pretrained(model, pretrained, allow_download=allow_download)
    trainable_names(model, trainable)
    return {key: array.copy() for key, array in state_to_numpy(model).items()}
