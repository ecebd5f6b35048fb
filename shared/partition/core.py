"""Pick a partitioner by name and turn its owner-per-example array into index lists."""

from __future__ import annotations

import numpy as np

from shared.config import PartitionConfig, PartitionName
from shared.errors import ConfigError
from shared.partition.label_skew import (
    classes_owner,
    dirichlet_owner,
    labels_per_client_owner,
    shards_owner,
)
from shared.partition.quantity import iid_owner, quantity_owner

__all__ = ["client_indices", "partition_indices"]

# One random stream per partitioner; feature_noise moves no example, so it shares iid's.
_STREAMS: dict[PartitionName, int] = {
    "iid": 1,
    "shards": 2,
    "dirichlet": 3,
    "classes": 4,
    "labels_per_client": 5,
    "quantity": 6,
    "feature_noise": 1,
}


def partition_indices(
    labels: np.ndarray, *, num_partitions: int, config: PartitionConfig, seed: int
) -> list[np.ndarray]:
    """Return each partition's sorted int64 indices into `labels`."""
    labels = _check_labels(labels)
    if num_partitions < 1:
        raise ConfigError(f"num_partitions must be >= 1, got {num_partitions}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([seed, num_partitions, _STREAMS[config.name]])
    return _group(_owner(labels, num_partitions, config, rng), num_partitions)


def client_indices(
    labels: np.ndarray,
    *,
    partition_id: int,
    num_partitions: int,
    config: PartitionConfig,
    seed: int,
) -> np.ndarray:
    """Return the sorted int64 indices of partition `partition_id`."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"partition_id {partition_id} is out of range: expected 0 to {num_partitions - 1} "
            f"for num_partitions={num_partitions}"
        )
    parts = partition_indices(labels, num_partitions=num_partitions, config=config, seed=seed)
    return parts[partition_id]


def _owner(
    labels: np.ndarray, num_partitions: int, config: PartitionConfig, rng: np.random.Generator
) -> np.ndarray:
    """Return the partition of each example, -1 for none."""
    name = config.name
    if name in ("iid", "feature_noise"):
        return iid_owner(len(labels), num_partitions, rng)
    if name == "quantity":
        return quantity_owner(len(labels), num_partitions, config.alpha, config.min_size, rng)
    if name == "shards":
        return shards_owner(labels, num_partitions, config.shards_per_client, rng)
    if name == "dirichlet":
        return dirichlet_owner(
            labels, num_partitions, config.alpha, config.min_size, rng, balance=config.balance
        )
    if name == "labels_per_client":
        return labels_per_client_owner(labels, num_partitions, config.k, rng)
    return classes_owner(labels, num_partitions, config.classes, rng)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"labels must be a 1-d integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ConfigError(f"labels must be >= 0, got {labels.min()}")
    return labels


def _group(owner: np.ndarray, num_partitions: int) -> list[np.ndarray]:
    """Turn an owner per example (-1 for none) into each partition's sorted indices."""
    unassigned = np.count_nonzero(owner < 0)
    order = np.argsort(owner, kind="stable").astype(np.int64)[unassigned:]  # sorted per owner
    sizes = np.bincount(owner[owner >= 0], minlength=num_partitions)
    return np.split(order, np.cumsum(sizes)[:-1])
