"""Training and evaluating on uint8 pixels normalized per batch equals doing it on float32."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from client_worker.train import TrainConfig, train
from shared.batches import ImageBatches
from shared.evaluation import evaluate
from shared.splits import Normalization, Split

NORMALIZATION = Normalization((0.2860,), (0.3530,))


def _split(seed: int, size: int) -> Split:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, 1, 6, 6), dtype=np.uint8)
    return Split(pixels, rng.integers(0, 3, size=size, dtype=np.int64), NORMALIZATION)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))


def test_training_on_uint8_batches_gives_the_same_weights_as_float32() -> None:
    split = _split(0, 50)
    labels = torch.from_numpy(split.labels)
    config = TrainConfig(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9)
    on_float, on_uint8 = _model(), _model()
    first = train(on_float, torch.from_numpy(split.images), labels, config, seed=3)
    second = train(on_uint8, ImageBatches.from_split(split), labels, config, seed=3)
    assert (second.num_examples, second.num_steps) == (50, 14)  # 7 batches x 2 epochs
    assert first.train_loss == second.train_loss
    for a, b in zip(on_float.state_dict().values(), on_uint8.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_evaluating_uint8_batches_equals_float32() -> None:
    split, model = _split(1, 23), _model()
    on_float = evaluate(model, split.images, split.labels, batch_size=5)
    on_uint8 = evaluate(model, ImageBatches.from_split(split), split.labels, batch_size=5)
    assert on_uint8 == on_float
    assert on_uint8.num_examples == 23
