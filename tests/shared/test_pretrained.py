"""Tests for pretrained initialisation: torchvision weights from a hub cache, local files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from shared.config import ModelArgs, load_config
from shared.errors import ModelError
from shared.models import build_model, init_global_weights, load_pretrained, state_to_numpy
from shared.models.pretrained import hub_path

RESNET18 = "ResNet18_Weights.IMAGENET1K_V1"
CIFAR: ModelArgs = {"in_channels": 3, "num_classes": 10, "image_size": 32}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the torch hub cache at an empty directory."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub"


@pytest.fixture
def imagenet_resnet18(hub: Path) -> dict[str, torch.Tensor]:
    """Write a stand-in for torchvision's ResNet-18 ImageNet checkpoint into the hub cache."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    # like the real file, saved before BatchNorm counted its batches
    state = {key: value for key, value in state.items() if "num_batches_tracked" not in key}
    path = hub_path(RESNET18)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def _fresh(name: str, args: ModelArgs) -> dict[str, np.ndarray]:
    return init_global_weights(name, seed=0, **args)


def test_hub_path_is_the_checkpoint_file_name(hub: Path) -> None:
    assert hub_path(RESNET18) == hub / "checkpoints" / "resnet18-f37072fd.pth"


def test_torchvision_weights_load_except_the_head(
    imagenet_resnet18: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.models.pretrained")
    weights = init_global_weights("resnet18-imagenet", seed=0, **CIFAR, pretrained=RESNET18)
    fresh = _fresh("resnet18-imagenet", CIFAR)
    for key, array in weights.items():
        if key.startswith("fc."):
            np.testing.assert_array_equal(array, fresh[key], err_msg=key)
        elif key.endswith("num_batches_tracked"):
            assert array == 0, key
        else:
            np.testing.assert_array_equal(array, imagenet_resnet18[key].numpy(), err_msg=key)
    [record] = caplog.records
    assert "2 tensors" in record.getMessage()
    assert "fc.weight [10, 512] vs [1000, 512]" in record.getMessage()


def test_adapted_stem_keeps_its_fresh_initialisation(
    imagenet_resnet18: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.models.pretrained")
    weights = init_global_weights("resnet18", seed=0, **CIFAR, pretrained=RESNET18)
    fresh = _fresh("resnet18", CIFAR)
    np.testing.assert_array_equal(weights["conv1.weight"], fresh["conv1.weight"])
    np.testing.assert_array_equal(weights["bn1.weight"], imagenet_resnet18["bn1.weight"].numpy())
    assert "conv1.weight [64, 3, 3, 3] vs [64, 3, 7, 7]" in caplog.records[0].getMessage()


def test_imagenet_stem_takes_gray_images(
    imagenet_resnet18: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.models")
    mnist: ModelArgs = {"in_channels": 1, "num_classes": 10, "image_size": 28}
    weights = init_global_weights("resnet18-imagenet", seed=0, **mnist, pretrained=RESNET18)
    rgb = imagenet_resnet18["conv1.weight"]  # (64, 3, 7, 7)
    np.testing.assert_allclose(
        weights["conv1.weight"][:, 0], (rgb[:, 0] + rgb[:, 1] + rgb[:, 2]).numpy()
    )
    np.testing.assert_array_equal(
        weights["layer1.0.conv1.weight"], imagenet_resnet18["layer1.0.conv1.weight"].numpy()
    )
    adapted, kept = (record.getMessage() for record in caplog.records)
    assert "conv1.weight [64, 3, 7, 7] -> [64, 1, 7, 7], summed over its input channels" in adapted
    assert "2 tensors" in kept
    assert "fc.weight [10, 512] vs [1000, 512]" in kept


def test_weights_missing_from_the_cache_name_the_file(hub: Path) -> None:
    with pytest.raises(ModelError, match="pretrained_download") as info:
        init_global_weights("resnet18", seed=0, **CIFAR, pretrained=RESNET18)
    assert str(hub / "checkpoints" / "resnet18-f37072fd.pth") in str(info.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(info.value)


def test_download_only_when_allowed(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_download(url: str, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls.append((url, kwargs))
        return dict(torchvision.models.resnet18(weights=None).state_dict())

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    init_global_weights("resnet18", seed=0, **CIFAR, pretrained=RESNET18, allow_download=True)
    [(url, kwargs)] = calls
    assert url.endswith("resnet18-f37072fd.pth")
    assert kwargs["model_dir"] == str(hub / "checkpoints")
    assert kwargs["weights_only"] is True


def test_unknown_torchvision_weights() -> None:
    with pytest.raises(ModelError, match=r"unknown torchvision weights 'ResNet18_Weights\.NOPE'"):
        load_pretrained(build_model("resnet18", **CIFAR), "ResNet18_Weights.NOPE")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_file_with_other_classes(tmp_path: Path, suffix: str) -> None:
    source = build_model("cnn", in_channels=3, num_classes=5, image_size=32)
    path = tmp_path / f"cnn{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)
    target = build_model("cnn", **CIFAR)
    head = target.get_parameter("9.weight").detach().clone()
    assert load_pretrained(target, str(path)) == ["9.weight", "9.bias"]
    assert torch.equal(target.get_parameter("0.weight"), source.get_parameter("0.weight"))
    assert torch.equal(target.get_parameter("9.weight"), head)


def test_missing_and_unexpected_tensors_name_them(tmp_path: Path) -> None:
    path = tmp_path / "mlp.pt"
    torch.save(build_model("mlp", **CIFAR).state_dict(), path)
    target = build_model("cnn", **CIFAR)
    before = {key: array.copy() for key, array in state_to_numpy(target).items()}
    with pytest.raises(ModelError, match=r"missing '0.weight', '0.bias', '7.weight'") as info:
        load_pretrained(target, str(path))
    assert "unexpected '1.weight', '1.bias'" in str(info.value)
    for key, array in state_to_numpy(target).items():
        np.testing.assert_array_equal(array, before[key])


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "does not exist"), (b"not a checkpoint", "cannot read"), ([1, 2], "no state dict")],
    ids=["absent", "garbage", "list"],
)
def test_unusable_files(tmp_path: Path, content: object, problem: str) -> None:
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ModelError, match=problem) as info:
        load_pretrained(build_model("mlp", **CIFAR), str(path))
    assert str(path) in str(info.value)


def test_config_fields_reach_init_global_weights(tmp_path: Path) -> None:
    path = tmp_path / "cnn.safetensors"
    save_file(build_model("cnn", in_channels=1, num_classes=10, image_size=28).state_dict(), path)
    config = load_config(overrides={"model": "cnn", "pretrained": str(path), "trainable": ["9.*"]})
    assert config.model_init_args() == {
        "pretrained": str(path),
        "trainable": ["9.*"],
        "allow_download": False,
    }
    weights = init_global_weights(
        config.model, seed=config.seed, **config.model_args(), **config.model_init_args()
    )
    assert not np.array_equal(weights["0.weight"], _fresh("cnn", config.model_args())["0.weight"])
    assert load_config().model_init_args()["pretrained"] is None


def test_failed_download_names_the_file(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(url: str, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ModelError, match="Network is unreachable") as info:
        load_pretrained(build_model("resnet18", **CIFAR), RESNET18, allow_download=True)
    assert str(hub_path(RESNET18)) in str(info.value)
