"""Float batches from uint8 pixels: the images a model sees are made one batch at a time."""

from __future__ import annotations

import numpy as np
import torch

from shared.splits import Normalization, Split

__all__ = ["ImageBatches", "Images", "to_float_batch"]


def to_float_batch(pixels: torch.Tensor, normalization: Normalization | None) -> torch.Tensor:
    """Return (B, C, H, W) float32: uint8 pixels scaled to [0, 1], then standardized.

    The same float32 operations as `shared.splits.normalize`, so the values are identical;
    float pixels are never changed in place.
    """
    if pixels.dtype == torch.uint8:
        images = pixels.to(torch.float32).div_(255.0)  # (B, C, H, W), a new tensor
    elif normalization is None:
        return pixels
    else:
        images = pixels.to(torch.float32, copy=True)
    if normalization is not None:
        mean = torch.tensor(normalization.mean, dtype=torch.float32, device=images.device)
        std = torch.tensor(normalization.std, dtype=torch.float32, device=images.device)
        mean, std = mean[:, None, None], std[:, None, None]
        images -= mean
        images /= std
    return images


class ImageBatches:
    """A split's pixels as a tensor; indexing returns the normalized float32 images."""

    def __init__(self, pixels: torch.Tensor, normalization: Normalization | None) -> None:
        self.pixels = pixels  # (N, C, H, W) uint8, or float32 used as they are
        self.normalization = normalization

    @classmethod
    def from_split(cls, split: Split) -> ImageBatches:
        """Wrap a split's pixels without copying them."""
        pixels = split.pixels
        if not pixels.flags.writeable:  # torch.from_numpy warns on read-only arrays
            pixels = np.array(pixels)
        return cls(torch.from_numpy(pixels), split.normalization)

    @property
    def shape(self) -> torch.Size:
        """Return the shape of the pixels, (N, C, H, W)."""
        return self.pixels.shape

    @property
    def ndim(self) -> int:
        """Return the number of dimensions of the pixels."""
        return self.pixels.ndim

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        return to_float_batch(self.pixels[index], self.normalization)


# What training takes: float32 images, or pixels that become float32 batch by batch.
Images = torch.Tensor | ImageBatches
