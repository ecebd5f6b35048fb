"""The vector a client masks: its update's floating tensors, flattened in the spec's order.

Tensors are taken in the order of the exchanged model's spec (`state_dict` order, the
clients' own and frozen tensors left out), floating ones only, each flattened in C order,
and concatenated. Integer and bool tensors are not aggregated under secure aggregation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared.wire import TensorSpec

__all__ = ["masked_names", "split_vector", "update_vector", "vector_length"]


def masked_names(spec: Mapping[str, TensorSpec]) -> list[str]:
    """Return the names of the floating tensors of `spec`, in its order."""
    return [name for name, s in spec.items() if np.dtype(s.dtype).kind == "f"]


def vector_length(spec: Mapping[str, TensorSpec]) -> int:
    """Return how many values the masked vector holds."""
    return sum(int(np.prod(spec[name].shape, dtype=np.int64)) for name in masked_names(spec))


def update_vector(
    trained: Mapping[str, np.ndarray],
    start: Mapping[str, np.ndarray],
    spec: Mapping[str, TensorSpec],
) -> np.ndarray:
    """Return y - x over the floating tensors of `spec`, flattened, in float64."""
    parts = [
        np.asarray(trained[name], np.float64).reshape(-1)
        - np.asarray(start[name], np.float64).reshape(-1)
        for name in masked_names(spec)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


def split_vector(vector: np.ndarray, spec: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """Return the tensors of a flat vector, by name and shape of `spec` (its floating part)."""
    tensors = {}
    offset = 0
    for name in masked_names(spec):
        shape = tuple(spec[name].shape)
        size = int(np.prod(shape, dtype=np.int64))
        tensors[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    if offset != vector.size:
        raise ValueError(f"a vector of {vector.size} values for a spec of {offset}")
    return tensors
