"""Tests for the model zoo: every model builds, runs and crosses the wire for each dataset."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from shared.config import ModelArgs
from shared.errors import ModelError
from shared.models import (
    MODEL_NAMES,
    build_model,
    count_parameters,
    init_global_weights,
    load_numpy_state,
    model_spec,
    state_to_numpy,
)
from shared.wire import decode_message, decode_weights, encode_message

# (in_channels, image_size, num_classes): MNIST, CIFAR-10, and a 64x64 two-class dataset
SHAPES = {"mnist": (1, 28, 10), "cifar": (3, 32, 10), "64px": (3, 64, 2)}
HEAVY = {"vit-b-16"}  # 86M parameters: built and run once, at 28x28 (test below)
ZOO = [name for name in MODEL_NAMES if name not in HEAVY]
# the deep ResNets without down-sampling stem take seconds at 64x64; resnet18 covers the stem
FORWARD = [
    (name, shape)
    for name in ZOO
    for shape in SHAPES
    if (name, shape) not in {("resnet34", "64px"), ("resnet50", "64px")}
]

# sha256 of init_global_weights(name, seed=0, ...) before the zoo was added: the models that
# existed then keep their weights bit for bit (see _digest).
DIGESTS = {
    ("mlp", "mnist"): "8213e8eb263ca39dcb3357c7341641c2c89a56e5d028a8ae4566feeeb1f7e0ff",
    ("mlp", "cifar"): "6502f86d9dfd21e47fdb44cbc4acc0b702f824d2b6d9218717da01b84ef9c1d1",
    ("mlp-128", "mnist"): "4343099aff6b00fe2bfd32edd1c5bb72d1d807cf5a3bf31bd5c6c78d6058e88f",
    ("mlp-128", "cifar"): "a20f6e18b2bcf7cd60abde1f8172f03716ffdad24e424cbb6a7245ef4c4407d1",
    ("cnn", "mnist"): "b2f342e7b6e54dfbcaa4d46207a13902f21d7f92cf68db8f29ca3ba5029a1fa1",
    ("cnn", "cifar"): "e364287a672cf917354b8761c81d87e40c5eaf1f269484be8402e42545da883e",
    ("resnet18", "mnist"): "47c701633bdc0f4abd32699b79f1e8dba9bdee24b45818cbee4f8decd3673514",
    ("resnet18", "cifar"): "667e7771cebd2fc398be8e31d1196e5f598468bb57740a993b0a85d707be2cf9",
    ("resnet18-imagenet", "mnist"): (
        "98e8f87a63a2f635fe2a2b68a9eba263c4fff9e58015f6d99b4f93be840ecf74"
    ),
    ("resnet18-imagenet", "cifar"): (
        "2d35ebb54349116c1749b6aff221d3b152f4db127375a9386a9829d475082ab9"
    ),
}


def _args(shape: str) -> ModelArgs:
    in_channels, image_size, num_classes = SHAPES[shape]
    return {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}


def _digest(weights: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key, array in weights.items():
        digest.update(key.encode())
        digest.update(array.dtype.str.encode())
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize(("name", "shape"), sorted(DIGESTS))
def test_existing_models_keep_their_initial_weights(name: str, shape: str) -> None:
    assert _digest(init_global_weights(name, seed=0, **_args(shape))) == DIGESTS[name, shape]


@pytest.mark.parametrize(("name", "shape"), FORWARD)
def test_forward_output_shape(name: str, shape: str) -> None:
    args = _args(shape)
    model = build_model(name, **args).eval()
    size = args["image_size"]
    with torch.no_grad():
        logits = model(torch.zeros(2, args["in_channels"], size, size))  # (B, C, H, W)
    assert logits.shape == (2, args["num_classes"])


@pytest.mark.parametrize("name", ZOO)
def test_state_crosses_the_wire_bit_for_bit(name: str) -> None:
    args = _args("cifar")
    source = dict(init_global_weights(name, seed=0, **args))
    target = build_model(name, **args)
    message = decode_message(encode_message({"weights": source}))
    load_numpy_state(target, decode_weights(message["weights"], spec=model_spec(target)))
    received = state_to_numpy(target)
    assert list(received) == list(source)
    for key, array in source.items():
        assert received[key].dtype == array.dtype, key
        assert received[key].tobytes() == array.tobytes(), key


@pytest.mark.parametrize(
    ("name", "image_size", "patch_embedding"),
    [("vit-b-16", 28, (768, 1, 16, 16)), ("vit-tiny", 30, (64, 1, 4, 4))],
)
def test_vit_resizes_images_to_whole_patches(
    name: str, image_size: int, patch_embedding: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=10, image_size=image_size).eval()
    assert model.get_parameter("conv_proj.weight").shape == patch_embedding
    assert model.image_size == 32  # the next multiple of 16 and of 4
    images = torch.randn(2, 1, image_size, image_size)  # (B, C, H, W)
    resized = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, 10)
        torch.testing.assert_close(logits, model(resized))  # 32x32 is resized to itself


def test_vit_tiny_takes_one_channel() -> None:
    model = build_model("vit-tiny", in_channels=1, num_classes=10, image_size=28)
    assert model.get_submodule("conv_proj").weight.shape == (64, 1, 4, 4)


@pytest.mark.parametrize("name", ["resnet34", "resnet50"])
def test_resnets_have_the_cifar_stem(name: str) -> None:
    model = build_model(name, in_channels=1, num_classes=10, image_size=28)
    conv1 = model.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.weight.shape == (64, 1, 3, 3)
    assert conv1.stride == (1, 1)
    assert isinstance(model.get_submodule("maxpool"), nn.Identity)


@pytest.mark.parametrize("name", ["resnet34-imagenet", "resnet50-imagenet"])
def test_imagenet_resnets_keep_their_stem(name: str) -> None:
    model = build_model(name, in_channels=3, num_classes=10, image_size=32)
    assert model.get_parameter("conv1.weight").shape == (64, 3, 7, 7)
    assert isinstance(model.get_submodule("maxpool"), nn.MaxPool2d)
    assert model.get_parameter("fc.weight").shape[0] == 10


@pytest.mark.parametrize("name", ["mobilenet-v3-small", "mobilenet-v3-large", "efficientnet-b0"])
@pytest.mark.parametrize(
    ("in_channels", "image_size", "stride"), [(1, 28, 1), (3, 32, 1), (3, 96, 2)]
)
def test_mobile_stem_keeps_small_images_whole(
    name: str, in_channels: int, image_size: int, stride: int
) -> None:
    model = build_model(name, in_channels=in_channels, num_classes=5, image_size=image_size)
    stem = model.get_submodule("features.0.0")
    assert isinstance(stem, nn.Conv2d)
    assert (stem.in_channels, stem.stride) == (in_channels, (stride, stride))


@pytest.mark.parametrize(("shape", "expected"), [("mnist", 44_426), ("cifar", 62_006)])
def test_simple_cnn_parameter_count(shape: str, expected: int) -> None:
    # CIFAR: conv 3*6*25+6 = 456, conv 6*16*25+16 = 2,416, fc 400*120+120 = 48,120,
    # fc 120*84+84 = 10,164, fc 84*10+10 = 850. MNIST: 156, 2,416, 256*120+120 = 30,840, ...
    assert count_parameters(build_model("simple-cnn", **_args(shape))) == expected


def test_simple_cnn_needs_16_pixels() -> None:
    with pytest.raises(ModelError, match="'simple-cnn' needs image_size >= 16, got 15"):
        build_model("simple-cnn", in_channels=1, num_classes=10, image_size=15)
    build_model("simple-cnn", in_channels=1, num_classes=10, image_size=16)


def test_simple_cnn_bn_adds_four_batchnorm_layers() -> None:
    # BatchNorm after conv 6, conv 16, fc 120 and fc 84: 2 * (6 + 16 + 120 + 84) = 452
    # parameters (weight and bias) on top of the simple CNN's 44,426 for MNIST.
    model = build_model("simple-cnn-bn", **_args("mnist"))
    assert count_parameters(model) == 44_426 + 452
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert [m.num_features for m in norms] == [6, 16, 120, 84]
