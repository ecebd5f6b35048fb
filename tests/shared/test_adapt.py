"""Tests for fitting pretrained tensors to the model: gray stems, ViT position embeddings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared.config import ModelArgs
from shared.errors import ModelError
from shared.models import build_model, load_pretrained
from shared.models.adapt import POSITION_EMBEDDING

MNIST: ModelArgs = {"in_channels": 1, "num_classes": 10, "image_size": 28}


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture the INFO lines of the pretrained loading modules."""
    caplog.set_level(logging.INFO, logger="shared.models")
    return caplog


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    save_file(state, path)
    return str(path)


def test_gray_stem_is_the_sum_of_the_rgb_filters(
    tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    rgb = dict(build_model("cnn", in_channels=3, num_classes=10, image_size=28).state_dict())
    base = torch.randn(32, 1, 5, 5)
    rgb["0.weight"] = torch.cat([base, 2 * base, 4 * base], dim=1)  # (out, R G B, 5, 5)
    gray = build_model("cnn", **MNIST)
    assert load_pretrained(gray, _save(rgb, tmp_path / "rgb.safetensors")) == []
    torch.testing.assert_close(gray.get_parameter("0.weight"), 7 * base)
    assert torch.equal(gray.get_parameter("0.bias"), rgb["0.bias"])
    assert torch.equal(gray.get_parameter("3.weight"), rgb["3.weight"])
    [record] = info_logs.records
    assert record.getMessage() == (
        f"pretrained {tmp_path / 'rgb.safetensors'}: 0.weight [32, 3, 5, 5] -> [32, 1, 5, 5], "
        "summed over its input channels"
    )


@pytest.mark.parametrize(
    ("name", "image_size"),
    [("resnet18", 16), ("vit-tiny", 28)],
)
def test_gray_model_computes_what_the_rgb_model_computes_on_gray_as_rgb(
    tmp_path: Path, name: str, image_size: int
) -> None:
    torch.manual_seed(0)
    rgb = build_model(name, in_channels=3, num_classes=10, image_size=image_size).eval()
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)
    gray = build_model(name, in_channels=1, num_classes=10, image_size=image_size).eval()
    assert load_pretrained(gray, str(path)) == []
    images = torch.randn(2, 1, image_size, image_size)  # (B, 1, H, W)
    with torch.no_grad():
        expected = rgb(images.repeat(1, 3, 1, 1))  # (B, 3, H, W): gray in every channel
        torch.testing.assert_close(gray(images), expected, rtol=1e-4, atol=1e-5)


def test_only_channels_may_differ(tmp_path: Path, info_logs: pytest.LogCaptureFixture) -> None:
    # the 7x7 ImageNet stem of an RGB ResNet into a 3x3 CIFAR stem for gray images
    rgb = build_model("resnet18-imagenet", in_channels=3, num_classes=10, image_size=32)
    gray = build_model("resnet18", in_channels=1, num_classes=10, image_size=32)
    fresh = gray.get_parameter("conv1.weight").detach().clone()
    path = _save(dict(rgb.state_dict()), tmp_path / "imagenet.safetensors")
    assert load_pretrained(gray, path) == ["conv1.weight"]
    assert torch.equal(gray.get_parameter("conv1.weight"), fresh)
    [record] = info_logs.records
    assert "conv1.weight [64, 1, 3, 3] vs [64, 3, 7, 7]" in record.getMessage()


def _vit_tiny_state(image_size: int, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """A vit-tiny state whose grid's position embeddings are row indices (class token: -1)."""
    state = dict(
        build_model(
            "vit-tiny", in_channels=in_channels, num_classes=10, image_size=image_size
        ).state_dict()
    )
    side = image_size // 4
    rows = torch.arange(side, dtype=torch.float32).repeat_interleave(side)  # row of each patch
    grid = rows.view(1, side * side, 1).expand(1, side * side, 64)
    state[POSITION_EMBEDDING] = torch.cat([torch.full((1, 1, 64), -1.0), grid], dim=1)
    return state


def test_vit_position_embeddings_follow_the_patch_grid(
    tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    state = _vit_tiny_state(image_size=32)  # an 8x8 grid: rows 0 to 7
    path = _save(state, tmp_path / "vit-32.safetensors")
    model = build_model("vit-tiny", in_channels=3, num_classes=10, image_size=16)
    assert load_pretrained(model, path) == []
    embedding = model.get_parameter(POSITION_EMBEDDING).detach()
    assert embedding.shape == (1, 1 + 4 * 4, 64)
    assert torch.equal(embedding[0, 0], torch.full((64,), -1.0))  # the class token's, as it was
    rows = embedding[0, 1:, 0].view(4, 4)  # (row, column) of the new 4x4 grid
    # bicubic with aligned corners: the first and last rows (0 and 7) stay as they were
    torch.testing.assert_close(rows[0], torch.zeros(4))
    torch.testing.assert_close(rows[3], torch.full((4,), 7.0))
    torch.testing.assert_close(rows, rows[:, :1].expand(4, 4))  # constant along each row
    assert bool((rows[1:, 0] > rows[:-1, 0]).all())
    torch.testing.assert_close(embedding[0, 1:], embedding[0, 1:, :1].expand(16, 64))
    for key, tensor in model.state_dict().items():
        if key != POSITION_EMBEDDING:
            assert torch.equal(tensor, state[key]), key
    [record] = info_logs.records
    assert record.getMessage().endswith(
        f"{POSITION_EMBEDDING} [1, 65, 64] -> [1, 17, 64], "
        "interpolated from a patch grid of 8x8 to 4x4"
    )


def test_gray_vit_of_another_size_gets_both_adaptations(
    tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    path = _save(_vit_tiny_state(image_size=16), tmp_path / "vit-16.safetensors")
    model = build_model("vit-tiny", in_channels=1, num_classes=10, image_size=30).eval()
    assert load_pretrained(model, path) == []
    assert model.get_parameter(POSITION_EMBEDDING).shape == (1, 1 + 8 * 8, 64)  # 30 -> 32 px
    assert model.get_parameter("conv_proj.weight").shape == (64, 1, 4, 4)
    messages = [record.getMessage() for record in info_logs.records]
    assert len(messages) == 2
    assert "conv_proj.weight [64, 3, 4, 4] -> [64, 1, 4, 4], summed" in messages[0]
    assert "from a patch grid of 4x4 to 8x8" in messages[1]
    with torch.no_grad():
        assert model(torch.randn(2, 1, 30, 30)).shape == (2, 10)


def test_position_embeddings_off_a_square_grid(tmp_path: Path) -> None:
    state = _vit_tiny_state(image_size=16)
    state[POSITION_EMBEDDING] = torch.zeros(1, 1 + 6, 64)  # 6 patches: no square grid
    model = build_model("vit-tiny", in_channels=3, num_classes=10, image_size=16)
    before = model.get_parameter(POSITION_EMBEDDING).detach().clone()
    with pytest.raises(ModelError, match=r"cannot interpolate encoder.pos_embedding \[1, 7, 64\]"):
        load_pretrained(model, _save(state, tmp_path / "odd.safetensors"))
    assert torch.equal(model.get_parameter(POSITION_EMBEDDING), before)
