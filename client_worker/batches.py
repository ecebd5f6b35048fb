"""The training loop's batches, on the device it trains on.

Uint8 pixels (`shared.batches.ImageBatches`) stay uint8 until a batch is made float32 and
normalized, on the device the batch is on. On CPU a batch is the partition indexed by the
batch's example ids, as always. On CUDA a
partition that fits the plan's data budget is copied to the device once per training and
batches are gathered there; a larger one is gathered on the host into two pinned buffers
used in turn, each copied with `non_blocking=True` so the copy of one batch overlaps the
compute of the one before (a buffer is refilled only once its last copy has ended).
"""

from __future__ import annotations

import torch

from client_worker.device import DevicePlan
from shared.batches import ImageBatches, Images, to_float_batch

__all__ = ["BatchSource"]

_PINNED_BUFFERS = 2


class BatchSource:
    """Gives the examples of one batch (ids on the CPU) as tensors on the plan's device."""

    def __init__(
        self, images: Images, labels: torch.Tensor, plan: DevicePlan, batch_size: int
    ) -> None:
        self.normalization = images.normalization if isinstance(images, ImageBatches) else None
        images = images.pixels if isinstance(images, ImageBatches) else images
        self.device = plan.device
        self.on_device = False
        self._pinned: list[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]] = []
        self._turn = 0
        if plan.is_cuda and _nbytes(images, labels) <= plan.data_budget_bytes:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            self.on_device = True
        elif plan.is_cuda:
            rows = min(batch_size, images.shape[0])
            self._pinned = [_pinned_pair(images, labels, rows) for _ in range(_PINNED_BUFFERS)]
        self.images, self.labels = images, labels

    def batch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the images (B, C, H, W) and labels (B,) of the examples `ids`."""
        if self.on_device:
            ids = ids.to(self.device, non_blocking=True)
            images, labels = self.images[ids], self.labels[ids]
        elif not self._pinned:
            images, labels = self.images[ids], self.labels[ids]  # CPU training: as before
        else:
            images, labels = self._through_pinned(ids)
        return to_float_batch(images, self.normalization), labels

    def _through_pinned(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather on the host into a pinned buffer, then copy it to the device asynchronously."""
        host_images, host_labels, copied = self._pinned[self._turn]
        if copied is not None:
            copied.synchronize()  # its previous batch has reached the device
        count = ids.numel()
        images, labels = host_images[:count], host_labels[:count]
        torch.index_select(self.images, 0, ids, out=images)
        torch.index_select(self.labels, 0, ids, out=labels)
        on_device = (
            images.to(self.device, non_blocking=True),
            labels.to(self.device, non_blocking=True),
        )
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        self._pinned[self._turn] = (host_images, host_labels, event)
        self._turn = (self._turn + 1) % _PINNED_BUFFERS
        return on_device


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _pinned_pair(
    images: torch.Tensor, labels: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
    """Return empty pinned host buffers for `rows` examples of `images` and `labels`."""
    return (
        torch.empty((rows, *images.shape[1:]), dtype=images.dtype, pin_memory=True),
        torch.empty((rows,), dtype=labels.dtype, pin_memory=True),
        None,
    )
