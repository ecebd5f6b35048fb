"""Where and how a worker trains: device, precision, GPU sharing and GPU memory.

Every CUDA-only call here is guarded by `device.type == "cuda"`, so the CPU path (the
default, and what the tests run) is the training loop as it was: fp32, no autocast, no
copies. On CUDA, virtual clients share the GPU one after another (`sequential`, a lock per
process) or at the same time, each in a CUDA stream of its own (`streams`).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch

from shared.errors import ConfigError

__all__ = [
    "MIB",
    "DevicePlan",
    "GpuGate",
    "GpuSharing",
    "Precision",
    "free_device_memory",
]

Precision = Literal["fp32", "bf16", "fp16"]
GpuSharing = Literal["sequential", "streams"]
T = TypeVar("T")
MIB = 1 << 20
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DevicePlan:
    """How one process trains: on which device, in which precision, with how much data there."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = "fp32"
    data_budget_bytes: int = 0  # on CUDA: a partition this small is held on the device

    def __post_init__(self) -> None:
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                f"precision fp16 needs a CUDA device (this worker trains on {self.device}); "
                "use bf16 or fp32"
            )

    @property
    def is_cuda(self) -> bool:
        """Tell whether training runs on a CUDA device."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Return the autocast context of a forward pass (none for fp32)."""
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Return a gradient scaler for fp16 on CUDA (None otherwise: no scaling)."""
        if self.precision == "fp16" and self.is_cuda:
            return torch.amp.GradScaler(self.device.type)
        return None

    def reset_peak_memory(self) -> None:
        """Start a new peak of the device's allocated memory (CUDA only)."""
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mb(self) -> float | None:
        """Return the device's peak allocated memory since the reset in MiB (None on CPU)."""
        if self.is_cuda:
            return torch.cuda.max_memory_allocated(self.device) / MIB
        return None


class GpuGate:
    """How the trainings of a process's clients share its GPU; on CPU, no effect."""

    def __init__(self, plan: DevicePlan, sharing: GpuSharing = "sequential") -> None:
        self.plan = plan
        self.sharing = sharing
        self._lock = threading.Lock()

    def run(self, work: Callable[[], T]) -> T:
        """Run `work`: alone on the GPU (sequential) or in a CUDA stream of its own (streams)."""
        if not self.plan.is_cuda:
            return work()
        if self.sharing == "sequential":
            with self._lock:
                return work()
        with _own_stream(self.plan.device):
            return work()


@contextlib.contextmanager
def _own_stream(device: torch.device) -> Iterator[None]:
    """Run the body in a new CUDA stream, then wait for the work queued in it."""
    stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream(device))  # the weights were loaded there
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


def free_device_memory(device: torch.device) -> None:
    """Give the memory a failed training held back to the device (CUDA only)."""
    gc.collect()  # tensors held by the exception's frames
    if device.type == "cuda":
        torch.cuda.empty_cache()
