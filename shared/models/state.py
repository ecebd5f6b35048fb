"""A model's full state as the numpy dict that the wire carries.

A model's state is everything in its ``state_dict``: parameters and buffers (BatchNorm's
running_mean, running_var and the int64 num_batches_tracked), in state_dict order. The
aggregator and every client build the same architecture from its registry name, so the
state alone moves between them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from shared.errors import ModelError
from shared.wire import TensorSpec

__all__ = [
    "count_parameters",
    "load_numpy_state",
    "model_spec",
    "state_nbytes",
    "state_to_numpy",
]


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
