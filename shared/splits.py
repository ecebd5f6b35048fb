"""A dataset in memory: uint8 pixels plus the constants that normalize them at batch time.

Images are held as they are stored, (N, C, H, W) uint8 in [0, 255] (Fashion-MNIST's
60,000 training images: 47 MB, against 188 MB as float32), and become float32 one batch
at a time (`shared.batches`). Generated data (`synthetic`) is held as float32 already.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import DatasetError

__all__ = ["Dataset", "Normalization", "Split", "normalize"]


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of pixels scaled to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise DatasetError(f"bad normalization: mean {self.mean}, std {self.std}")


@dataclass(frozen=True)
class Split:
    """One split of a dataset: pixels, their labels, and how to normalize the pixels."""

    pixels: np.ndarray  # (N, C, H, W) uint8 in [0, 255], or float32 used as they are
    labels: np.ndarray  # (N,) int64
    normalization: Normalization | None = None  # None: float32 pixels are already features

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4 or len(self.pixels) != len(self.labels):
            raise DatasetError(
                f"images {self.pixels.shape} and labels {self.labels.shape} do not form a "
                "split: expected (N, C, H, W) images and (N,) labels"
            )
        if self.pixels.dtype not in (np.uint8, np.float32):
            raise DatasetError(f"pixels must be uint8 or float32, not {self.pixels.dtype}")
        norm = self.normalization
        if norm is not None and len(norm.mean) != self.pixels.shape[1]:
            raise DatasetError(
                f"normalization for {len(norm.mean)} channels, images have {self.pixels.shape[1]}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> np.ndarray:
        """Return all images normalized, (N, C, H, W) float32: a new array at every call."""
        return normalize(self.pixels, self.normalization)

    def subset(self, indices: np.ndarray) -> Split:
        """Return the examples at `indices`, in that order."""
        return Split(self.pixels[indices], self.labels[indices], self.normalization)


@dataclass(frozen=True)
class Dataset:
    """A train and a test split plus what a model needs to know about them."""

    name: str
    train: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]


def normalize(pixels: np.ndarray, normalization: Normalization | None) -> np.ndarray:
    """Scale uint8 pixels to [0, 1], then standardize each channel; always a fresh array."""
    images = np.array(pixels, dtype=np.float32, order="C")  # (N, C, H, W)
    if pixels.dtype == np.uint8:
        images /= 255.0
    if normalization is not None:
        images -= np.asarray(normalization.mean, dtype=np.float32)[:, None, None]
        images /= np.asarray(normalization.std, dtype=np.float32)[:, None, None]
    return images
