"""The model registry, and a model's full state as the numpy dict that the wire carries.

A model's state is everything in its ``state_dict``: parameters and buffers (BatchNorm's
running_mean, running_var and the int64 num_batches_tracked), in state_dict order. The
aggregator and every client build the same architecture from its registry name, so the
state alone moves between them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torchvision
from torch import nn

from shared.errors import ModelError
from shared.wire import TensorSpec

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "count_parameters",
    "init_global_weights",
    "load_numpy_state",
    "model_spec",
    "state_nbytes",
    "state_to_numpy",
]

MODEL_NAMES: tuple[str, ...] = ("mlp", "mlp-128", "cnn", "resnet18", "resnet18-imagenet")


# ---------------------------------------------------------------------------- builders


def _build_mlp(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    # McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    # Decentralized Data" (https://arxiv.org/abs/1602.05629), the "2NN": two hidden layers
    # of 200 units with ReLU; 199,210 parameters on MNIST.
    in_features = in_channels * image_size * image_size
    return nn.Sequential(
        nn.Flatten(),  # (B, C, H, W) -> (B, C*H*W)
        nn.Linear(in_features, 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def _build_mlp_128(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    # The Keras/TensorFlow beginner tutorial MLP: one hidden layer of 128 units, dropout 0.2.
    in_features = in_channels * image_size * image_size
    return nn.Sequential(
        nn.Flatten(),  # (B, C, H, W) -> (B, C*H*W)
        nn.Linear(in_features, 128),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


def _build_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    # McMahan et al. 2017 (https://arxiv.org/abs/1602.05629), the "CNN": two 5x5 conv layers
    # (32 and 64 channels) each followed by 2x2 max-pooling, a 512-unit dense layer, softmax.
    # Padding 2 keeps each conv "same"-sized, so only the pools shrink the image.
    side = image_size // 2 // 2
    if side < 1:
        raise ModelError(f"model 'cnn' needs image_size >= 4, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),  # (B, 32, S, S)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, S/2, S/2)
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 64, S/4, S/4)
        nn.Flatten(),
        nn.Linear(64 * side * side, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def _conv_stem(in_channels: int, *, kernel_size: int, stride: int, padding: int) -> nn.Conv2d:
    """Return a bias-free 64-channel stem conv initialised as torchvision's ResNet does."""
    conv = nn.Conv2d(in_channels, 64, kernel_size, stride=stride, padding=padding, bias=False)
    # He et al. 2015 (https://arxiv.org/abs/1502.01852), fan_out as in torchvision's ResNet,
    # so a replaced stem starts like the rest of the network.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _build_resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    model: nn.Module = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    # He et al. 2016 (https://arxiv.org/abs/1512.03385), section 4.2: on 32x32 CIFAR images
    # the first layer is a 3x3 conv without down-sampling. The ImageNet stem (7x7 stride 2
    # + max-pool) would shrink a 32x32 image to 8x8 before the first residual block.
    model.conv1 = _conv_stem(in_channels, kernel_size=3, stride=1, padding=1)
    model.maxpool = nn.Identity()
    return model


def _build_resnet18_imagenet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    # He et al. 2016 (https://arxiv.org/abs/1512.03385), table 1: the ImageNet stem as is.
    model: nn.Module = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = _conv_stem(in_channels, kernel_size=7, stride=2, padding=3)
    return model


_BUILDERS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "mlp": _build_mlp,
    "mlp-128": _build_mlp_128,
    "cnn": _build_cnn,
    "resnet18": _build_resnet18,
    "resnet18-imagenet": _build_resnet18_imagenet,
}


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the registered model `name` for images of the given channels and size."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return builder(in_channels, num_classes, image_size)


def init_global_weights(
    name: str, *, seed: int, in_channels: int, num_classes: int, image_size: int
) -> dict[str, np.ndarray]:
    """Return the seeded initial global state: the same for a seed on every machine.

    torch's layer initialisers draw from the process-wide generator; it is forked here, so
    the caller's RNG state is left as it was. Not safe against other threads drawing from
    that generator at the same moment.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            name, in_channels=in_channels, num_classes=num_classes, image_size=image_size
        )
    return {key: array.copy() for key, array in state_to_numpy(model).items()}


# ---------------------------------------------------------------------------- state


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Return the model's full state (parameters and buffers) as numpy, in state_dict order.

    On CPU the arrays alias the model's memory (no copy): later training changes them, and
    writing to them changes the model. Copy them to keep a snapshot.
    """
    return {key: tensor.detach().cpu().numpy() for key, tensor in model.state_dict().items()}


def model_spec(model: nn.Module) -> dict[str, TensorSpec]:
    """Return the reference spec (names, shapes, dtype names) of the model's full state."""
    return {
        key: TensorSpec(tuple(tensor.shape), _numpy_dtype_name(tensor.dtype))
        for key, tensor in model.state_dict().items()
    }


def load_numpy_state(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy `weights` into the model in place, after checking every name, shape and dtype.

    Nothing is changed if any check fails. Read-only arrays (wire views) are accepted.
    """
    state = model.state_dict()
    _check_state(state, weights)
    with torch.no_grad():
        for key, tensor in state.items():
            _copy_into(tensor, weights[key])


def _check_state(state: Mapping[str, torch.Tensor], weights: Mapping[str, np.ndarray]) -> None:
    missing = [key for key in state if key not in weights]
    if missing:
        raise ModelError(
            f"tensor {missing[0]!r} is missing from the weights ({len(missing)} missing in all)"
        )
    unexpected = [key for key in weights if key not in state]
    if unexpected:
        raise ModelError(f"tensor {unexpected[0]!r} is not part of this model's state")
    for key, tensor in state.items():
        array = weights[key]
        if array.shape != tuple(tensor.shape):
            raise ModelError(
                f"tensor {key!r}: shape {list(array.shape)} does not match the model's "
                f"{list(tensor.shape)}"
            )
        expected = _numpy_dtype_name(tensor.dtype)
        if array.dtype.name != expected:
            raise ModelError(
                f"tensor {key!r}: dtype {array.dtype.name} does not match the model's {expected}"
            )


def _copy_into(tensor: torch.Tensor, array: np.ndarray) -> None:
    """Copy `array` into `tensor` once, without wrapping a read-only array as a tensor."""
    if tensor.device.type == "cpu":
        np.copyto(tensor.numpy(), array)  # the tensor's own writable view
    else:
        tensor.copy_(torch.tensor(array))


def _numpy_dtype_name(dtype: torch.dtype) -> str:
    return torch.empty(0, dtype=dtype).numpy().dtype.name


def count_parameters(model: nn.Module) -> int:
    """Return the number of scalar parameters (buffers excluded)."""
    return sum(parameter.numel() for parameter in model.parameters())


def state_nbytes(weights: Mapping[str, np.ndarray]) -> int:
    """Return the total size in bytes of a state's arrays."""
    return sum(array.nbytes for array in weights.values())
