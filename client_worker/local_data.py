"""A client's own data: its partition of the training split, noised if so, and a local test split.

Every client computes its partition locally from its partition id, with the experiment
seed, so that the partitions of all clients are disjoint without any coordination.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.batches import ImageBatches
from shared.config import ExperimentConfig
from shared.data import Dataset
from shared.partition import client_indices, noise_for_client

__all__ = ["LocalData", "hold_out", "load_local_data", "partition_data"]


@dataclass(frozen=True)
class LocalData:
    """What one client trains on, and the held-out split it tests on (None: no split)."""

    images: ImageBatches
    labels: torch.Tensor
    local_test: tuple[ImageBatches, torch.Tensor] | None


def load_local_data(
    dataset: Dataset, config: ExperimentConfig, *, partition_id: int, num_partitions: int
) -> LocalData:
    """Return this client's partition, less the share `local_test_fraction` holds out."""
    images, labels = partition_data(
        dataset, config, partition_id=partition_id, num_partitions=num_partitions
    )
    return LocalData(*hold_out(images, labels, config.local_test_fraction, seed=config.seed))


def partition_data(
    dataset: Dataset, config: ExperimentConfig, *, partition_id: int, num_partitions: int
) -> tuple[ImageBatches, torch.Tensor]:
    """Return the images and labels of this client's partition (feature noise applied)."""
    indices = client_indices(
        dataset.train.labels,
        partition_id=partition_id,
        num_partitions=num_partitions,
        config=config.partition,
        seed=config.seed,  # the same for every client: partitions stay disjoint
    )
    split = dataset.train.subset(indices)
    labels = torch.from_numpy(split.labels)
    partition = config.partition
    if partition.name == "feature_noise":  # this client's inputs, noised once, float32
        noisy = noise_for_client(
            split.images,
            client=partition_id,
            num_clients=num_partitions,
            sigma=partition.sigma,
            seed=config.seed,
        )
        return ImageBatches(torch.from_numpy(noisy), None), labels
    return ImageBatches.from_split(split), labels  # uint8 held


def hold_out(
    images: ImageBatches, labels: torch.Tensor, fraction: float, *, seed: int
) -> tuple[ImageBatches, torch.Tensor, tuple[ImageBatches, torch.Tensor] | None]:
    """Split a partition into training data and a held-out local test split (seeded)."""
    count = round(fraction * len(labels))
    if count == 0 or count == len(labels):
        return images, labels, None
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test, train = order[:count].sort().values, order[count:].sort().values
    pixels, norm = images.pixels, images.normalization
    held = (ImageBatches(pixels[test], norm), labels[test])
    return ImageBatches(pixels[train], norm), labels[train], held
