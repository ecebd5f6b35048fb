"""Tests of shared/exchange.py: which tensors travel, which each client keeps."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.exchange import exchanged_names, local_names, personalization
from shared.models import build_model

MNIST = {"in_channels": 1, "num_classes": 10, "image_size": 28}


def test_fedper_keeps_the_named_head() -> None:
    model = build_model("mlp", **MNIST)  # tensors 1.*, 3.*, 5.*: 5 is the head
    assert local_names(model, local_layers=["5.*"], fedbn=False) == ["5.weight", "5.bias"]
    assert exchanged_names(model, local_layers=["5.*"], fedbn=False) == [
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
    ]


def test_fedbn_keeps_every_batchnorm_tensor_and_only_those() -> None:
    model = build_model("resnet18", in_channels=3, num_classes=10, image_size=32)
    local = local_names(model, local_layers=[], fedbn=True)
    names = list(model.state_dict())
    assert "bn1.running_mean" in local
    assert "layer2.0.downsample.1.num_batches_tracked" in local  # a BatchNorm not named bn
    assert all(".bn" in f".{n}" or "downsample.1" in n for n in local)
    assert not any(n.endswith("conv1.weight") or n.startswith("fc.") for n in local)
    assert exchanged_names(model, local_layers=[], fedbn=True) == [
        n for n in names if n not in set(local)
    ]


def test_nothing_local_by_default() -> None:
    model = build_model("mlp", **MNIST)
    assert exchanged_names(model, local_layers=[], fedbn=False) == list(model.state_dict())


@pytest.mark.parametrize(
    ("local_layers", "fedbn", "message"),
    [
        (["head.*"], False, "'head.\\*' matches no tensor"),
        ([], True, "no BatchNorm layer"),
        (["*"], False, "nothing would be federated"),
    ],
)
def test_unusable_personalization_is_a_config_error(
    local_layers: list[str], fedbn: bool, message: str
) -> None:
    model = build_model("mlp", **MNIST)
    with pytest.raises(ConfigError, match=message):
        exchanged_names(model, local_layers=local_layers, fedbn=fedbn)


def test_the_round_config_carries_the_split() -> None:
    assert personalization({}) == ((), False)
    assert personalization({"local_layers": ["fc.*"], "fedbn": True}) == (("fc.*",), True)
    with pytest.raises(ConfigError, match="list of name patterns"):
        personalization({"local_layers": "fc.*"})
