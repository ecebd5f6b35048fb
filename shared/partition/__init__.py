"""Split a training set among `num_partitions` clients, iid or non-IID as in the literature.

Partitioners: iid, shards, dirichlet, classes, labels_per_client (#C=k), quantity and
feature_noise (iid indices; the noise is added to the images by `noise_for_client`).
Every partitioner is a pure function of (labels, num_partitions, config, seed), so each
client computes its own slice from its partition_id alone, with no coordination.
Run ``python -m shared.partition --help`` to print the label histogram of a partitioning.
"""

from shared.partition.cli import main, partition_report
from shared.partition.core import client_indices, partition_indices
from shared.partition.noise import noise_for_client, noise_std
from shared.partition.quantity import MAX_DRAWS

__all__ = [
    "MAX_DRAWS",
    "client_indices",
    "main",
    "noise_for_client",
    "noise_std",
    "partition_indices",
    "partition_report",
]
