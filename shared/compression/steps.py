"""Steps between two versions of a model: what download deltas carry (docs/protocol.md).

A step holds, for each floating tensor, new - old in its dtype, float32 ones encoded as a
CompressionSpec says (plain where `plan` keeps them plain); for each integer or bool
tensor, its new value. `apply_step` adds a step to the model a receiver holds, in the
model's dtypes: a sender and a receiver that add the same decoded step to the same model
hold the same bits afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.compression.codec import decode_tensor, encode_update
from shared.compression.spec import CompressionSpec
from shared.errors import MalformedMessage, SpecMismatch
from shared.wire_tensors import TensorSpec, kind_of, spec_of

__all__ = ["apply_step", "step_between"]


def step_between(
    new: Mapping[str, np.ndarray],
    old: Mapping[str, np.ndarray],
    compression: CompressionSpec,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Return the encoded step from `old` to `new` (floating: the difference; others: values)."""
    differences = {
        name: np.subtract(array, old[name], dtype=array.dtype) if _floating(array.dtype) else array
        for name, array in new.items()
    }
    return encode_update(differences, compression, rng)


def apply_step(held: Mapping[str, np.ndarray], step: Any) -> dict[str, np.ndarray]:
    """Return `held` + `step`, checking the step's names, shapes and dtypes against `held`."""
    if not isinstance(step, Mapping):
        raise MalformedMessage(f"a step must be a map of name to tensor, got {kind_of(step)}")
    for name in step:
        if name not in held:
            raise SpecMismatch(str(name)[:200], "is not a tensor of the model held")
    result: dict[str, np.ndarray] = {}
    for name, expected in spec_of(held).items():
        if name not in step:
            raise SpecMismatch(name, "missing from the step")
        change = _decoded(name, step[name], expected)
        base = held[name]
        if _floating(base.dtype):
            result[name] = np.add(base, change, dtype=base.dtype)
        else:
            result[name] = change
    return result


def _decoded(name: str, obj: Any, expected: TensorSpec) -> np.ndarray:
    """Return a step's tensor: an array as the sender holds it, or a received tensor map."""
    if isinstance(obj, np.ndarray):
        if obj.shape != tuple(expected.shape) or obj.dtype.name != expected.dtype:
            raise SpecMismatch(name, "does not match the model held")
        return obj
    return decode_tensor(name, obj, expected)


def _floating(dtype: np.dtype[Any]) -> bool:
    return bool(np.issubdtype(dtype, np.floating))
