"""Tests for shared/batches.py: float batches made from uint8 pixels at batch time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.batches import ImageBatches, to_float_batch
from shared.splits import Normalization, Split, normalize

CIFAR = Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def _pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_batch_equals_normalizing_the_whole_split() -> None:
    split = Split(_pixels(0, (12, 3, 4, 4)), np.arange(12, dtype=np.int64) % 3, CIFAR)
    batches = ImageBatches.from_split(split)
    index = torch.tensor([7, 0, 11, 3])
    batch = batches[index]
    assert batch.dtype == torch.float32
    assert tuple(batch.shape) == (4, 3, 4, 4)
    # Bit for bit the same float32 arithmetic as the numpy path.
    np.testing.assert_array_equal(batch.numpy(), split.images[index.numpy()])
    np.testing.assert_array_equal(batches[2:5].numpy(), split.images[2:5])
    assert batches.shape == (12, 3, 4, 4)
    assert (batches.ndim, len(batches)) == (4, 12)


def test_known_values_per_channel() -> None:
    pixels = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).repeat(1, 3, 1, 1)
    out = to_float_batch(pixels, CIFAR)
    for channel, (mean, std) in enumerate(zip(CIFAR.mean, CIFAR.std, strict=True)):
        assert out[0, channel, 0, 0].item() == pytest.approx(-mean / std, abs=1e-6)
        assert out[1, channel, 0, 0].item() == pytest.approx((1 - mean) / std, abs=1e-6)


def test_held_pixels_stay_uint8_and_unchanged() -> None:
    pixels = _pixels(1, (5, 1, 3, 3))
    batches = ImageBatches.from_split(Split(pixels.copy(), np.zeros(5, np.int64), None))
    batches[torch.arange(5)]
    assert batches.pixels.dtype == torch.uint8
    np.testing.assert_array_equal(batches.pixels.numpy(), pixels)


def test_float_pixels_are_never_changed_in_place() -> None:
    features = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    before = features.clone()
    assert to_float_batch(features, None) is features  # already features: used as they are
    out = to_float_batch(features, Normalization((1.0, -1.0), (2.0, 0.5)))
    torch.testing.assert_close(features, before)
    torch.testing.assert_close(out[:, 1], (before[:, 1] + 1.0) / 0.5)


def test_uint8_takes_a_quarter_of_float32() -> None:
    pixels = _pixels(2, (100, 1, 28, 28))
    assert pixels.nbytes * 4 == normalize(pixels, None).nbytes
