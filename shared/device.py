"""Which torch device a process computes on: "auto", "cpu", "cuda" or "cuda:N", checked.

"auto" is the first CUDA device when torch sees one, else the CPU. A CUDA device that
is asked for but absent is a `ConfigError` naming it, raised when the process starts
rather than at the first batch. Checking a name needs no torch: the aggregator's settings
import this module without it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from shared.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_PATTERN", "check_device_name", "resolve_device"]

DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"
_DEVICE_RE = re.compile(DEVICE_PATTERN)


def check_device_name(name: str) -> str:
    """Return `name` if it is auto, cpu, cuda or cuda:N; raise ValueError otherwise."""
    if not _DEVICE_RE.match(name):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    return name


def resolve_device(name: str) -> torch.device:
    """Return the torch device `name` stands for; raise ConfigError if it is not here."""
    import torch  # here: checking a name needs no torch

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} was asked for but CUDA is not available "
            "(no GPU, no driver, or a CPU-only torch build); choose cpu or auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"device {name!r} was asked for but this machine has {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1})"
        )
    return device
