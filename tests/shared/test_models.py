"""Tests for shared.models: the registry, parameter counts and moving full state as numpy."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
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
    state_nbytes,
    state_to_numpy,
)
from shared.wire import TensorSpec, decode_message, decode_weights, encode_message

MNIST: ModelArgs = {"in_channels": 1, "image_size": 28, "num_classes": 10}
CIFAR: ModelArgs = {"in_channels": 3, "image_size": 32, "num_classes": 10}


def _small_bn_net(seed: int) -> nn.Sequential:
    """A tiny conv net with a BatchNorm layer, so its state holds buffers."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=3),  # (B, 4, 4, 4) on 6x6 inputs
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def _snapshot(model: nn.Module) -> dict[str, np.ndarray]:
    return {key: array.copy() for key, array in state_to_numpy(model).items()}


def _assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------- registry


def test_forward_with_other_num_classes() -> None:
    model = build_model("cnn", in_channels=3, num_classes=7, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 7)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # 784*200+200 + 200*200+200 + 200*10+10 = 157,000 + 40,200 + 2,010
        ("mlp", 199_210),
        # 784*128+128 + 128*10+10 = 100,480 + 1,290
        ("mlp-128", 101_770),
        # conv 1*32*25+32 = 832; conv 32*64*25+64 = 51,264; fc (64*7*7)*512+512 = 1,606,144;
        # fc 512*10+10 = 5,130
        ("cnn", 1_663_370),
    ],
)
def test_parameter_counts_on_mnist(name: str, expected: int) -> None:
    assert count_parameters(build_model(name, **MNIST)) == expected


def test_resnet18_cifar_parameters_and_state_size() -> None:
    model = build_model("resnet18", **CIFAR)
    # torchvision's resnet18 has 11,689,512 parameters; the 3x3 stem replaces 3*64*7*7 with
    # 3*64*3*3 and the 10-class head replaces 512*1000+1000 with 512*10+10.
    expected_params = 11_689_512 - 3 * 64 * 49 + 3 * 64 * 9 - 513_000 + 5_130
    assert expected_params == 11_173_962
    assert count_parameters(model) == expected_params
    # BatchNorm layers: the stem (64), 4 in layer1 (64), 5 each in layers 2-4 (4 in the
    # blocks + 1 in the down-sampling path) of 128, 256 and 512 channels.
    bn_channels = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512
    bn_layers = 1 + 4 + 5 + 5 + 5
    # float32 weights + float32 running_mean and running_var + one int64 counter per layer
    expected_bytes = expected_params * 4 + bn_channels * 2 * 4 + bn_layers * 8
    weights = state_to_numpy(model)
    assert state_nbytes(weights) == expected_bytes
    assert state_nbytes(weights) == pytest.approx(44.7e6, rel=1e-3)


def test_resnet18_stem_is_for_small_images() -> None:
    model = build_model("resnet18", **CIFAR)
    conv1 = model.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert conv1.bias is None
    assert isinstance(model.get_submodule("maxpool"), nn.Identity)


def test_resnet18_accepts_one_channel() -> None:
    model = build_model("resnet18", **MNIST)
    assert model.get_parameter("conv1.weight").shape == (64, 1, 3, 3)


@pytest.mark.parametrize(
    ("in_channels", "expected_conv1"), [(3, (64, 3, 7, 7)), (1, (64, 1, 7, 7))]
)
def test_resnet18_imagenet_keeps_imagenet_stem(
    in_channels: int, expected_conv1: tuple[int, ...]
) -> None:
    model = build_model("resnet18-imagenet", in_channels=in_channels, num_classes=10, image_size=32)
    conv1 = model.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.weight.shape == expected_conv1
    assert (conv1.stride, conv1.padding) == ((2, 2), (3, 3))
    assert isinstance(model.get_submodule("maxpool"), nn.MaxPool2d)


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="unknown model 'vgg'") as info:
        build_model("vgg", **MNIST)
    for name in MODEL_NAMES:
        assert name in str(info.value)


# ---------------------------------------------------------------------------- state


def test_state_holds_buffers_with_their_dtypes() -> None:
    model = _small_bn_net(seed=0)
    weights = state_to_numpy(model)
    assert list(weights) == list(model.state_dict())
    assert weights["1.num_batches_tracked"].dtype == np.int64
    assert weights["1.num_batches_tracked"].shape == ()
    assert weights["1.running_mean"].dtype == np.float32
    np.testing.assert_array_equal(weights["1.running_var"], np.ones(4, dtype=np.float32))


def test_state_arrays_alias_model_memory() -> None:
    model = _small_bn_net(seed=0)
    weights = state_to_numpy(model)
    before = weights["4.weight"].copy()
    with torch.no_grad():
        model.get_parameter("4.weight").add_(1.0)
    model.train()(torch.ones(2, 1, 6, 6))  # updates the BatchNorm buffers in place
    np.testing.assert_array_equal(weights["4.weight"], before + 1.0)
    assert weights["1.num_batches_tracked"] == 1


def test_model_spec_matches_state() -> None:
    model = _small_bn_net(seed=0)
    spec = model_spec(model)
    assert spec["0.weight"] == TensorSpec((4, 1, 3, 3), "float32")
    assert spec["1.num_batches_tracked"] == TensorSpec((), "int64")
    assert list(spec) == list(model.state_dict())


def test_round_trip_into_fresh_resnet_gives_identical_outputs() -> None:
    source = build_model("resnet18", **CIFAR)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    source.train()(images)  # running stats and counters move away from their defaults
    target = build_model("resnet18", **CIFAR)
    load_numpy_state(target, state_to_numpy(source))
    source.eval()
    target.eval()
    with torch.no_grad():
        assert torch.equal(source(images), target(images))
    assert target.get_buffer("bn1.num_batches_tracked").item() == 1


def test_load_read_only_arrays_without_warning() -> None:
    source, target = _small_bn_net(seed=0), _small_bn_net(seed=1)
    source.train()(torch.ones(2, 1, 6, 6))
    read_only = {
        key: np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)
        for key, array in state_to_numpy(source).items()
    }
    assert not any(array.flags.writeable for array in read_only.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_numpy_state(target, read_only)
    _assert_same_state(_snapshot(target), _snapshot(source))


def test_load_what_the_wire_decodes() -> None:
    source, target = _small_bn_net(seed=0), _small_bn_net(seed=1)
    source.train()(torch.ones(2, 1, 6, 6))
    message = decode_message(encode_message({"weights": state_to_numpy(source)}))
    load_numpy_state(target, decode_weights(message["weights"], spec=model_spec(target)))
    _assert_same_state(_snapshot(target), _snapshot(source))


def _wrong_shape(w: dict[str, np.ndarray]) -> None:
    w["4.bias"] = np.zeros(5, dtype=np.float32)


def _missing(w: dict[str, np.ndarray]) -> None:
    del w["4.bias"]


def _wrong_dtype(w: dict[str, np.ndarray]) -> None:
    w["4.bias"] = w["4.bias"].astype(np.float64)


def _unexpected(w: dict[str, np.ndarray]) -> None:
    w["4.extra"] = np.zeros(1, dtype=np.float32)


@pytest.mark.parametrize(
    ("corrupt", "tensor", "problem"),
    [
        (_wrong_shape, "4.bias", r"shape \[5\] does not match the model's \[3\]"),
        (_missing, "4.bias", "missing"),
        (_wrong_dtype, "4.bias", "dtype float64 does not match the model's float32"),
        (_unexpected, "4.extra", "not part of this model"),
    ],
    ids=["shape", "missing", "dtype", "unexpected"],
)
def test_bad_state_raises_and_changes_nothing(
    corrupt: Callable[[dict[str, np.ndarray]], None], tensor: str, problem: str
) -> None:
    # "4.bias" is the last tensor: every tensor before it would be copied if the checks
    # did not all run first.
    weights = _snapshot(_small_bn_net(seed=1))
    corrupt(weights)
    target = _small_bn_net(seed=0)
    before = _snapshot(target)
    with pytest.raises(ModelError, match=problem) as info:
        load_numpy_state(target, weights)
    assert repr(tensor) in str(info.value)
    _assert_same_state(_snapshot(target), before)


# ---------------------------------------------------------------------------- initial state


def test_init_global_weights_is_seeded() -> None:
    first = init_global_weights("cnn", seed=7, **MNIST)
    again = init_global_weights("cnn", seed=7, **MNIST)
    other = init_global_weights("cnn", seed=8, **MNIST)
    _assert_same_state(first, again)
    assert list(other) == list(first)
    assert not np.array_equal(first["0.weight"], other["0.weight"])
    assert all(array.flags.owndata and array.flags.writeable for array in first.values())


def test_init_global_weights_includes_buffers() -> None:
    weights = init_global_weights("resnet18", seed=0, **MNIST)
    assert list(weights) == list(build_model("resnet18", **MNIST).state_dict())
    assert weights["bn1.num_batches_tracked"].dtype == np.int64


def test_init_global_weights_leaves_global_rng_untouched() -> None:
    before = torch.get_rng_state()
    init_global_weights("mlp", seed=3, **MNIST)
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(ModelError):
        init_global_weights("nope", seed=3, **MNIST)
    assert torch.equal(torch.get_rng_state(), before)


def test_state_nbytes_sums_array_sizes() -> None:
    weights: dict[str, np.ndarray] = {
        "a": np.zeros((2, 3), dtype=np.float32),
        "b": np.zeros((), dtype=np.int64),
    }
    assert state_nbytes(weights) == 2 * 3 * 4 + 8
