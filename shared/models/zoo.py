"""torchvision's models, built by torchvision, with stem and head adapted to the dataset.

Each public factory takes the dataset's ``(in_channels, num_classes, image_size)``. The head
is torchvision's own, built with ``num_classes``; the stem takes ``in_channels`` and, where
the name or image size asks for it, does not down-sample small images; a ViT resizes images
to a whole number of patches. Module names stay torchvision's, so its pretrained state dicts
load by name (shared/models/pretrained.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import nn

__all__ = [
    "SMALL_IMAGE",
    "ResizeToGrid",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet18",
    "resnet18_imagenet",
    "resnet34",
    "resnet34_imagenet",
    "resnet50",
    "resnet50_imagenet",
    "vit_b_16",
    "vit_tiny",
]

SMALL_IMAGE = 64  # MobileNet and EfficientNet stems keep full resolution up to this side

Factory = Callable[..., nn.Module]  # a torchvision builder: (weights=None, num_classes=...)


def _stem_conv(
    in_channels: int, out_channels: int, *, kernel_size: int, stride: int, padding: int
) -> nn.Conv2d:
    """Return a bias-free stem conv initialised as torchvision's CNNs initialise theirs."""
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
    )
    # He et al. 2015 (https://arxiv.org/abs/1502.01852), fan_out as in torchvision's ResNet,
    # MobileNetV3 and EfficientNet, so a replaced stem starts like the rest of the network.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


# ---------------------------------------------------------------------------- ResNet


def _resnet(factory: Factory, in_channels: int, num_classes: int, *, cifar_stem: bool) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if cifar_stem:
        # He et al. 2016 (https://arxiv.org/abs/1512.03385), section 4.2: on 32x32 CIFAR
        # images the first layer is a 3x3 conv without down-sampling. The ImageNet stem
        # (7x7 stride 2 + max-pool) would shrink a 32x32 image to 8x8 before the first block.
        model.conv1 = _stem_conv(in_channels, 64, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        # He et al. 2016, table 1: the ImageNet stem, for other than 3 channels.
        model.conv1 = _stem_conv(in_channels, 64, kernel_size=7, stride=2, padding=3)
    return model


def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return ResNet-18 with the CIFAR stem (3x3 conv, no max-pool)."""
    return _resnet(torchvision.models.resnet18, in_channels, num_classes, cifar_stem=True)


def resnet18_imagenet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return ResNet-18 with the ImageNet stem (7x7 stride 2, max-pool)."""
    return _resnet(torchvision.models.resnet18, in_channels, num_classes, cifar_stem=False)


def resnet34(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return ResNet-34 with the CIFAR stem (3x3 conv, no max-pool)."""
    return _resnet(torchvision.models.resnet34, in_channels, num_classes, cifar_stem=True)


def resnet34_imagenet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return ResNet-34 with the ImageNet stem (7x7 stride 2, max-pool)."""
    return _resnet(torchvision.models.resnet34, in_channels, num_classes, cifar_stem=False)


def resnet50(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return ResNet-50 with the CIFAR stem (3x3 conv, no max-pool)."""
    return _resnet(torchvision.models.resnet50, in_channels, num_classes, cifar_stem=True)


def resnet50_imagenet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return ResNet-50 with the ImageNet stem (7x7 stride 2, max-pool)."""
    return _resnet(torchvision.models.resnet50, in_channels, num_classes, cifar_stem=False)


# ---------------------------------------------------------------------------- mobile CNNs


def _mobile(factory: Factory, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    stem = model.get_submodule("features.0.0")  # Conv2dNormActivation's conv, 3x3 stride 2
    assert isinstance(stem, nn.Conv2d)
    # The ImageNet stem and four stride-2 stages divide the side by 32: a 32x32 image would
    # leave 1x1 features. Small images get a stride-1 stem, the CIFAR adaptation of He et al.
    # 2016 (https://arxiv.org/abs/1512.03385, section 4.2): no down-sampling in the first layer.
    stride = 1 if image_size <= SMALL_IMAGE else 2
    if in_channels != stem.in_channels or (stride, stride) != stem.stride:
        new_stem = _stem_conv(
            in_channels, stem.out_channels, kernel_size=3, stride=stride, padding=1
        )
        model.set_submodule("features.0.0", new_stem)
    return model


def mobilenet_v3_small(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return MobileNetV3-Small (https://arxiv.org/abs/1905.02244)."""
    return _mobile(torchvision.models.mobilenet_v3_small, in_channels, num_classes, image_size)


def mobilenet_v3_large(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return MobileNetV3-Large (https://arxiv.org/abs/1905.02244)."""
    return _mobile(torchvision.models.mobilenet_v3_large, in_channels, num_classes, image_size)


def efficientnet_b0(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return EfficientNet-B0 (https://arxiv.org/abs/1905.11946)."""
    return _mobile(torchvision.models.efficientnet_b0, in_channels, num_classes, image_size)


# ---------------------------------------------------------------------------- ViT


class ResizeToGrid:
    """A forward pre-hook resizing images (bilinear) to the side a ViT's patch grid covers."""

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        """Return the module's input, resized to `side` x `side` pixels."""
        (images,) = args  # (B, C, H, W)
        size = (self.side, self.side)
        return (F.interpolate(images, size=size, mode="bilinear", align_corners=False),)


def _vit(build: Factory, in_channels: int, image_size: int, *, patch_size: int) -> nn.Module:
    """Build a torchvision VisionTransformer for images of `in_channels` and `image_size`."""
    # torchvision's ViT cuts images into whole patches: a side that is not a multiple of the
    # patch size is resized up to the next one (28 -> 32 for 16x16 patches) by a forward
    # pre-hook, so the module names, and the state, stay torchvision's.
    side = math.ceil(image_size / patch_size) * patch_size
    model = build(image_size=side)
    if side != image_size:
        model.register_forward_pre_hook(ResizeToGrid(side))
    if in_channels == 3:
        return model
    old = model.get_submodule("conv_proj")
    assert isinstance(old, nn.Conv2d)
    conv = nn.Conv2d(in_channels, old.out_channels, kernel_size=patch_size, stride=patch_size)
    # The patch embedding's initialisation in torchvision's VisionTransformer: LeCun normal
    # (truncated), std sqrt(1 / fan_in), zero bias.
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * patch_size**2)))
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    model.conv_proj = conv
    return model


def vit_b_16(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return ViT-B/16 (https://arxiv.org/abs/2010.11929) for images of any size."""
    build = functools.partial(torchvision.models.vit_b_16, weights=None, num_classes=num_classes)
    return _vit(build, in_channels, image_size, patch_size=16)


def vit_tiny(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return a two-layer ViT with 4x4 patches and width 64: fast enough for tests and demos."""
    build = functools.partial(
        torchvision.models.VisionTransformer,
        patch_size=4,  # (B, 64, 64) tokens on 32x32 images
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=num_classes,
    )
    return _vit(build, in_channels, image_size, patch_size=4)
