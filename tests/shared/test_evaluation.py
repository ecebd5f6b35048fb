"""Tests for shared.evaluation: loss and accuracy against hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from shared.evaluation import EvalResult, evaluate

# Five 1x2x2 images; the model's logits are the first three pixels of each.
PIXELS = [
    [2.0, 0.0, 0.0, 5.0],  # logits [2, 0, 0], label 0: correct
    [0.0, 3.0, 0.0, 5.0],  # logits [0, 3, 0], label 1: correct
    [0.0, 0.0, 1.0, 5.0],  # logits [0, 0, 1], label 0: predicted 2, wrong
    [1.0, 0.0, 0.0, 5.0],  # logits [1, 0, 0], label 2: predicted 0, wrong
    [0.0, 1.0, 2.0, 5.0],  # logits [0, 1, 2], label 2: correct
]
LABELS = [0, 1, 0, 2, 2]
E = math.e
# cross-entropy = log(sum(exp(logits))) - logits[label], per row above
HAND_LOSSES = [
    math.log(E**2 + 2) - 2,
    math.log(E**3 + 2) - 3,
    math.log(E + 2),
    math.log(E + 2),
    math.log(1 + E + E**2) - 2,
]


def _images() -> np.ndarray:
    return np.array(PIXELS, dtype=np.float32).reshape(5, 1, 2, 2)


def _labels() -> np.ndarray:
    return np.array(LABELS, dtype=np.int64)


def _pick_first_three() -> nn.Module:
    """A linear model whose logits are pixels 0, 1 and 2 of each image."""
    linear = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3, 4))
    return nn.Sequential(nn.Flatten(), linear)


class _Recorder(nn.Module):
    """Records the grad mode, training flag and input memory seen by each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _pick_first_three()
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.is_grad_enabled(), self.training, x.data_ptr()))
        out: torch.Tensor = self.inner(x)
        return out


def test_loss_and_accuracy_match_hand_computation() -> None:
    result = evaluate(_pick_first_three(), _images(), _labels())
    assert result.num_examples == 5
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.loss == pytest.approx(sum(HAND_LOSSES) / 5, rel=1e-6)


def test_loss_matches_torch_cross_entropy_on_independent_logits() -> None:
    logits = torch.from_numpy(_images().reshape(5, 4)[:, :3])
    expected = F.cross_entropy(logits, torch.from_numpy(_labels())).item()
    result = evaluate(_pick_first_three(), torch.from_numpy(_images()), _labels())
    assert result.loss == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_uneven_batches_match_one_batch(batch_size: int) -> None:
    whole = evaluate(_pick_first_three(), _images(), _labels(), batch_size=5)
    split = evaluate(_pick_first_three(), _images(), _labels(), batch_size=batch_size)
    assert split.accuracy == whole.accuracy
    assert split.num_examples == whole.num_examples
    assert split.loss == pytest.approx(whole.loss, rel=1e-6)


def test_runs_without_grad_in_eval_mode_and_restores_training() -> None:
    model = _Recorder().train()
    evaluate(model, _images(), _labels(), batch_size=2)
    assert [(grad, training) for grad, training, _ in model.calls] == [(False, False)] * 3
    assert model.training
    assert model.inner.training
    assert torch.is_grad_enabled()


def test_restores_each_module_mode() -> None:
    model = _Recorder().train()
    model.inner.eval()
    evaluate(model, _images(), _labels())
    assert model.training
    assert not model.inner.training


def test_dropout_is_off_during_evaluation() -> None:
    model = nn.Sequential(nn.Dropout(0.5), _pick_first_three()).train()
    results = {evaluate(model, _images(), _labels()) for _ in range(5)}
    assert results == {evaluate(_pick_first_three(), _images(), _labels())}


def test_writable_numpy_images_are_not_copied() -> None:
    images = _images()
    model = _Recorder()
    evaluate(model, images, _labels())
    assert model.calls[0][2] == images.ctypes.data


def test_read_only_arrays_work_without_warning() -> None:
    images = np.frombuffer(_images().tobytes(), dtype=np.float32).reshape(5, 1, 2, 2)
    labels = np.frombuffer(_labels().tobytes(), dtype=np.int64)
    assert not images.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate(_pick_first_three(), images, labels, batch_size=2)
    assert result == evaluate(_pick_first_three(), _images(), _labels(), batch_size=2)


def test_result_is_frozen() -> None:
    result = EvalResult(loss=0.5, accuracy=1.0, num_examples=2)
    with pytest.raises(AttributeError):
        result.loss = 1.0  # type: ignore[misc]


def test_empty_input_raises() -> None:
    empty = np.zeros((0, 1, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="empty"):
        evaluate(_pick_first_three(), empty, np.zeros(0, dtype=np.int64))


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        evaluate(_pick_first_three(), _images(), _labels()[:4])


def test_bad_batch_size_raises() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(_pick_first_three(), _images(), _labels(), batch_size=0)
