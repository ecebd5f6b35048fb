"""Which tensors of a model train: fnmatch patterns over its state names.

Patterns match the names of the full state, buffers included: ``["layer4.*", "fc.*"]``
trains those layers' weights and updates their BatchNorm running statistics, while every
other layer's parameters and buffers are frozen. A frozen BatchNorm layer still updates its
statistics in train mode unless ``freeze_norm_statistics`` puts it in eval mode.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from fnmatch import fnmatchcase

from torch import nn

from shared.errors import ModelError

__all__ = ["batch_norm_layers", "freeze_norm_statistics", "set_trainable", "trainable_names"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batch_norm_layers(model: nn.Module) -> list[str]:
    """Return "name (kind)" of each BatchNorm layer, e.g. ["1 (BatchNorm2d)"], in order."""
    return [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if isinstance(module, _NORMS)
    ]


def trainable_names(
    spec_or_model: Mapping[str, object] | nn.Module, patterns: Sequence[str]
) -> list[str]:
    """Return the state names matching any pattern, in state order; no patterns: all names.

    `spec_or_model` is a model, its `model_spec` or any mapping keyed by its state names
    (a numpy state, for one).
    """
    if isinstance(spec_or_model, nn.Module):
        names = list(spec_or_model.state_dict())
    else:
        names = list(spec_or_model)
    if not patterns:
        return names
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in names):
            example = names[-1] if names else "(no tensors)"
            raise ModelError(
                f"trainable pattern {pattern!r} matches no tensor of the model "
                f"(names look like {example!r}; 'fc.*' matches all of layer fc)"
            )
    return [name for name in names if any(fnmatchcase(name, pattern) for pattern in patterns)]


def set_trainable(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set requires_grad on the parameters matching `patterns`, clear it on the others.

    Return the trainable state names (parameters and buffers), as `trainable_names` does.
    """
    names = trainable_names(model, patterns)
    chosen = set(names)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    return names


def freeze_norm_statistics(model: nn.Module, trainable: Collection[str]) -> list[str]:
    """Put the BatchNorm layers whose running statistics are frozen in eval mode.

    Call it after ``model.train()``, which puts every layer back in train mode. Return the
    names of the layers it switched.
    """
    chosen = set(trainable)
    frozen = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        statistics = isinstance(module, _NORMS) and module.track_running_stats
        if statistics and f"{prefix}running_mean" not in chosen:
            module.eval()
            frozen.append(name)
    return frozen
