"""Which of a model's tensors travel and are averaged, and which each client keeps.

Frozen tensors (outside the `trainable` patterns, shared/models/freezing.py) neither
travel nor change: every client has them from the global model it started from.

Personalization keeps part of the model on each client: FedBN (Li et al. 2021,
https://arxiv.org/abs/2102.07623) keeps every BatchNorm layer's parameters and statistics
local; FedPer (Arivazhagan et al. 2019, https://arxiv.org/abs/1912.00818) keeps named
layers local, typically the head (`local_layers: ["fc.*"]`). Local tensors are never sent
nor averaged; both sides compute the same split from the model and the experiment config
(the round config carries `local_layers` and `fedbn` to the workers).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from shared.errors import ConfigError
from shared.models import trainable_names

__all__ = ["exchanged_names", "local_names", "personalization"]


def personalization(config: Mapping[str, Any]) -> tuple[tuple[str, ...], bool]:
    """Return (local_layers, fedbn) of a round config (absent: nothing local)."""
    patterns = config.get("local_layers") or ()
    if not isinstance(patterns, list | tuple) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"local_layers must be a list of name patterns, got {patterns!r}")
    return tuple(patterns), bool(config.get("fedbn", False))


def local_names(model: nn.Module, *, local_layers: Sequence[str], fedbn: bool) -> list[str]:
    """Return the names of the tensors each client keeps, in the model's state_dict order."""
    names = list(model.state_dict())
    local = set()
    for pattern in local_layers:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise ConfigError(
                f"local_layers pattern {pattern!r} matches no tensor of the model "
                f"(its tensors: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
            )
        local.update(matched)
    if fedbn:
        norms = [
            f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules()
            if isinstance(module, _BatchNorm)
            for name in module.state_dict()
        ]
        if not norms:
            raise ConfigError("fedbn is set but the model has no BatchNorm layer")
        local.update(norms)
    return [name for name in names if name in local]


def exchanged_names(
    model: nn.Module,
    *,
    local_layers: Sequence[str],
    fedbn: bool,
    trainable: Sequence[str] = (),
) -> list[str]:
    """Return the names of the tensors updates carry and the server averages, in order.

    Those are the tensors that train (`trainable` patterns; none: all) and are not local.
    """
    local = set(local_names(model, local_layers=local_layers, fedbn=fedbn))
    trains = set(trainable_names(model, trainable))
    exchanged = [name for name in model.state_dict() if name in trains and name not in local]
    if not exchanged:
        raise ConfigError("every tensor of the model is local: nothing would be federated")
    return exchanged
