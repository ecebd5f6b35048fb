"""Pretrained initialisation: torchvision's weights from the local hub cache, or a local file.

A source is either a torchvision weights enum name (``"ResNet18_Weights.IMAGENET1K_V1"``),
read from ``torch.hub.get_dir()/checkpoints/`` and downloaded only when allowed, or the path
of a ``.safetensors`` file or of a ``torch.save``'d state dict (read with
``weights_only=True``: no pickled code runs). An RGB stem for 1-channel images and a ViT's
position embeddings for another patch grid are fitted to the model (shared/models/adapt.py);
other tensors whose shapes differ from the model's (the head for other classes, a CIFAR stem)
keep their fresh initialisation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from shared.errors import ModelError
from shared.models.adapt import adapt_pretrained

__all__ = ["apply_pretrained", "hub_path", "load_pretrained", "read_pretrained"]

logger = logging.getLogger(__name__)

_WEIGHTS_NAME = re.compile(r"^\w+_Weights\.\w+$")
# Checkpoints saved before torch 0.4.1 (torchvision's ResNet IMAGENET1K_V1 among them) lack
# BatchNorm's batch counter; it stays at its fresh value, 0.
_OPTIONAL = "num_batches_tracked"


def load_pretrained(model: nn.Module, source: str, *, allow_download: bool = False) -> list[str]:
    """Copy `source`'s tensors into `model`; return the names left at their initialisation."""
    return apply_pretrained(model, read_pretrained(source, allow_download=allow_download), source)


def read_pretrained(source: str, *, allow_download: bool = False) -> dict[str, torch.Tensor]:
    """Read the state dict of a torchvision weights name or a local file."""
    if _WEIGHTS_NAME.match(source):
        return _read_hub(source, allow_download=allow_download)
    return _read_file(Path(source))


def hub_path(weights_name: str) -> Path:
    """Return where the torch hub cache keeps the file of a torchvision weights enum name."""
    filename = Path(urlparse(_weights(weights_name).url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def apply_pretrained(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Copy the tensors of `state` that fit, once adapted; return the names left as they were.

    Every name is checked before anything is copied: a missing or unexpected tensor is a
    ModelError naming them, and the model is left unchanged.
    """
    own = model.state_dict()
    missing = [key for key in own if key not in state and not key.endswith(_OPTIONAL)]
    unexpected = [key for key in state if key not in own]
    if missing or unexpected:
        problems = [f"missing {_few(missing)}"] if missing else []
        problems += [f"unexpected {_few(unexpected)}"] if unexpected else []
        raise ModelError(
            f"pretrained weights {source} do not fit this model: " + "; ".join(problems)
        )
    state = adapt_pretrained(model, state, source)
    kept = [key for key in own if key in state and state[key].shape != own[key].shape]
    with torch.no_grad():
        for key, tensor in own.items():
            if key in state and key not in kept:
                tensor.copy_(state[key])
    if kept:
        shapes = [f"{key} {list(own[key].shape)} vs {list(state[key].shape)}" for key in kept]
        logger.info(
            "pretrained %s: %d tensors of other shapes keep their fresh initialisation: %s",
            source,
            len(kept),
            ", ".join(shapes),
        )
    return kept


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _weights(name: str) -> Any:
    try:
        return torchvision.models.get_weight(name)
    except (ValueError, KeyError):
        raise ModelError(
            f"unknown torchvision weights {name!r}: expected an enum member such as "
            "'ResNet18_Weights.IMAGENET1K_V1' (torchvision.models.list_models shows the models)"
        ) from None


def _read_hub(name: str, *, allow_download: bool) -> dict[str, torch.Tensor]:
    path = hub_path(name)
    if path.is_file():
        return _read(path, _torch_load)
    url = _weights(name).url
    if not allow_download:
        raise ModelError(
            f"pretrained weights {name} are not in the torch hub cache: no file {path}. "
            f"Download {url} to that path (the hub directory follows TORCH_HOME), "
            "or set pretrained_download: true"
        )
    logger.info("downloading pretrained weights %s from %s to %s", name, url, path)

    def download(path: Path) -> object:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=str(path.parent), map_location="cpu", check_hash=True, weights_only=True
        )

    return _read(path, download)


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"pretrained weights file {path} does not exist")
    if path.suffix != ".safetensors":
        return _read(path, _torch_load)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError(
            f"reading {path} needs the safetensors package (pip install safetensors)"
        ) from None
    return _read(path, load_file)


def _torch_load(path: Path) -> object:
    return torch.load(path, map_location="cpu", weights_only=True)


def _read(path: Path, reader: Callable[[Path], object]) -> dict[str, torch.Tensor]:
    """Read a state dict with `reader`; any failure is a ModelError naming the file."""
    try:
        state = reader(path)
    except Exception as exc:  # each format's parser raises its own error types
        raise ModelError(f"cannot read pretrained weights {path}: {exc}") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ModelError(f"pretrained weights {path} hold no state dict (names to tensors)")
    return dict(state)
