"""The vector a client masks: its update's floating tensors, flattened in the spec's order.

Tensors are taken in the order of the exchanged model's spec (`state_dict` order, the
clients' own and frozen tensors left out), floating ones only, each flattened in C order,
and concatenated: the delta y - x. Then, when the strategy asks every update for tensor
groups (`update_groups`), each group's floating tensors as sent (their values, not
differences), groups sorted by name and tensors by name within a group. Integer and bool
tensors are not aggregated under secure aggregation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared.wire import TensorSpec, spec_of

__all__ = [
    "group_values",
    "masked_group_names",
    "masked_names",
    "split_sum",
    "split_vector",
    "update_vector",
    "vector_length",
]

GroupSpecs = Mapping[str, Mapping[str, TensorSpec]]


def masked_names(spec: Mapping[str, TensorSpec]) -> list[str]:
    """Return the names of the floating tensors of `spec`, in its order."""
    return [name for name, s in spec.items() if np.dtype(s.dtype).kind == "f"]


def masked_group_names(group_specs: GroupSpecs) -> list[tuple[str, str]]:
    """Return the (group, tensor) names of the floating group tensors, in the vector's order."""
    return [
        (group, name)
        for group in sorted(group_specs)
        for name in sorted(group_specs[group])
        if np.dtype(group_specs[group][name].dtype).kind == "f"
    ]


def vector_length(spec: Mapping[str, TensorSpec], group_specs: GroupSpecs | None = None) -> int:
    """Return how many values the masked vector holds (the model's, then the groups')."""
    specs = group_specs or {}
    size = sum(int(np.prod(spec[name].shape, dtype=np.int64)) for name in masked_names(spec))
    for group, name in masked_group_names(specs):
        size += int(np.prod(specs[group][name].shape, dtype=np.int64))
    return size


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


def group_values(groups: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    """Return an update's floating group tensors, flattened in the vector's order, float64."""
    specs = {group: spec_of(tensors) for group, tensors in groups.items()}
    parts = [
        np.asarray(groups[group][name], np.float64).reshape(-1)
        for group, name in masked_group_names(specs)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


def split_sum(
    vector: np.ndarray, spec: Mapping[str, TensorSpec], group_specs: GroupSpecs
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Return a summed vector's model tensors and group tensors, by the specs' names and shapes."""
    model_size = vector_length(spec)
    groups: dict[str, dict[str, np.ndarray]] = {group: {} for group in group_specs}
    offset = model_size
    for group, name in masked_group_names(group_specs):
        shape = tuple(group_specs[group][name].shape)
        size = int(np.prod(shape, dtype=np.int64))
        groups[group][name] = vector[offset : offset + size].reshape(shape)
        offset += size
    if offset != vector.size:
        raise ValueError(f"a vector of {vector.size} values for specs of {offset}")
    return split_vector(vector[:model_size], spec), groups


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
