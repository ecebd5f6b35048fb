"""Pretrained tensors fitted to a model built for other data: gray stems, ViT position grids.

Two adaptations, each logged with the tensor's name and both shapes:

- A convolution that takes 1 channel where the pretrained one took several (an RGB stem or
  patch embedding for MNIST) gets the pretrained weight summed over its input channels: on
  a gray image it computes what the pretrained conv computes on that image repeated to RGB.
- A torchvision VisionTransformer whose patch grid differs from the pretrained one (another
  image or patch size) gets the pretrained position embeddings interpolated to its grid, with
  torchvision's ``interpolate_embeddings`` (bicubic; the class token's is kept as it is).

Any other tensor of another shape is left to the caller (shared/models/pretrained.py).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from shared.errors import ModelError

__all__ = ["POSITION_EMBEDDING", "adapt_pretrained"]

logger = logging.getLogger(__name__)

POSITION_EMBEDDING = "encoder.pos_embedding"  # torchvision ViT's, (1, 1 + grid**2, hidden)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def adapt_pretrained(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Return `state` with the tensors that can be fitted to `model` fitted to it."""
    own = model.state_dict()
    adapted = dict(state)
    for key in _gray_convs(model, own, state):
        adapted[key] = state[key].sum(dim=1, keepdim=True)
        _log(source, key, state[key], adapted[key], "summed over its input channels")
    if _other_grid(model, own, state):
        before = state[POSITION_EMBEDDING]
        after = adapted[POSITION_EMBEDDING] = _interpolated(model, before, source)
        how = f"interpolated from a patch grid of {_grid(before)} to {_grid(after)}"
        _log(source, POSITION_EMBEDDING, before, after, how)
    return adapted


def _gray_convs(
    model: nn.Module, own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> list[str]:
    """Name the weights of 1-channel convs whose pretrained weights differ only in channels."""
    keys = []
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if not isinstance(module, _CONVS) or key not in state:
            continue
        if module.in_channels != 1 or module.groups != 1:
            continue
        theirs, ours = state[key].shape, own[key].shape
        if len(theirs) == len(ours) and theirs[1] > 1 and _same_but_channels(theirs, ours):
            keys.append(key)
    return keys


def _same_but_channels(theirs: torch.Size, ours: torch.Size) -> bool:
    return theirs[0] == ours[0] and theirs[2:] == ours[2:]


def _other_grid(
    model: nn.Module, own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> bool:
    """Tell whether the pretrained position embeddings are a ViT's for another patch grid."""
    if not isinstance(model, VisionTransformer) or POSITION_EMBEDDING not in state:
        return False
    theirs, ours = state[POSITION_EMBEDDING].shape, own[POSITION_EMBEDDING].shape
    return len(theirs) == 3 and theirs[::2] == ours[::2] and theirs[1] != ours[1]


def _interpolated(model: nn.Module, embedding: torch.Tensor, source: str) -> torch.Tensor:
    """Return `embedding` interpolated to the grid of `model`, a torchvision ViT."""
    try:
        fitted = interpolate_embeddings(
            image_size=model.image_size,
            patch_size=model.patch_size,
            model_state=OrderedDict({POSITION_EMBEDDING: embedding}),
        )
    except ValueError as exc:  # not a square grid of patches after the class token
        raise ModelError(
            f"pretrained weights {source}: cannot interpolate {POSITION_EMBEDDING} "
            f"{list(embedding.shape)}: {exc}"
        ) from None
    result: torch.Tensor = fitted[POSITION_EMBEDDING]
    return result


def _grid(embedding: torch.Tensor) -> str:
    side = math.isqrt(embedding.shape[1] - 1)  # after the class token
    return f"{side}x{side}"


def _log(source: str, key: str, before: torch.Tensor, after: torch.Tensor, how: str) -> None:
    logger.info(
        "pretrained %s: %s %s -> %s, %s", source, key, list(before.shape), list(after.shape), how
    )
