"""Tests for freezing: trainable name patterns, requires_grad and BatchNorm statistics."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from shared.config import ModelArgs
from shared.errors import ModelError
from shared.models import (
    build_model,
    freeze_norm_statistics,
    init_global_weights,
    model_spec,
    set_trainable,
    trainable_names,
)

CIFAR: ModelArgs = {"in_channels": 3, "num_classes": 10, "image_size": 32}


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return build_model("resnet18", **CIFAR)


def _bn_net() -> nn.Sequential:
    """conv, BatchNorm, conv, BatchNorm, linear: names 0, 1, 2, 3, 5."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    )


def test_head_only(resnet: nn.Module) -> None:
    assert trainable_names(resnet, ["fc.*"]) == ["fc.weight", "fc.bias"]


def test_spec_and_model_agree(resnet: nn.Module) -> None:
    patterns = ["layer4.*", "fc.*"]
    assert trainable_names(model_spec(resnet), patterns) == trainable_names(resnet, patterns)


def test_no_patterns_train_everything(resnet: nn.Module) -> None:
    assert trainable_names(resnet, []) == list(resnet.state_dict())


def test_buffers_follow_their_layer(resnet: nn.Module) -> None:
    names = trainable_names(resnet, ["layer4.*", "fc.*"])
    assert "layer4.1.bn2.running_mean" in names
    assert "layer4.1.bn2.num_batches_tracked" in names
    assert "bn1.running_mean" not in names
    assert "layer3.1.bn2.weight" not in names
    assert names[-2:] == ["fc.weight", "fc.bias"]  # state order


@pytest.mark.parametrize("pattern", ["fc", "head.*"])
def test_pattern_matching_nothing_is_named(resnet: nn.Module, pattern: str) -> None:
    with pytest.raises(ModelError, match=re.escape(f"trainable pattern {pattern!r} matches no")):
        trainable_names(resnet, ["layer4.*", pattern])


def test_init_global_weights_checks_the_patterns() -> None:
    with pytest.raises(ModelError, match=re.escape("'classifier.*'")):
        init_global_weights("mlp", seed=0, **CIFAR, trainable=["classifier.*"])


def test_set_trainable_marks_parameters() -> None:
    model = _bn_net()
    names = set_trainable(model, ["3.*", "5.*"])
    assert names == [
        "3.weight",
        "3.bias",
        "3.running_mean",
        "3.running_var",
        "3.num_batches_tracked",
        "5.weight",
        "5.bias",
    ]
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    assert grads == {name: name in names for name in grads}
    model(torch.randn(2, 1, 6, 6)).sum().backward()
    assert model.get_parameter("0.weight").grad is None
    assert model.get_parameter("5.weight").grad is not None


def test_set_trainable_without_patterns_unfreezes() -> None:
    model = _bn_net()
    set_trainable(model, ["5.*"])
    set_trainable(model, [])
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_batchnorm_keeps_its_statistics() -> None:
    model = _bn_net()
    names = set_trainable(model, ["3.*", "5.*"])
    model.train()
    assert freeze_norm_statistics(model, names) == ["1"]
    before = model.get_buffer("1.running_mean").clone(), model.get_buffer("3.running_mean").clone()
    model(torch.randn(4, 1, 6, 6) + 5.0)
    assert torch.equal(model.get_buffer("1.running_mean"), before[0])
    assert not torch.equal(model.get_buffer("3.running_mean"), before[1])
    assert model.get_buffer("1.num_batches_tracked").item() == 0
