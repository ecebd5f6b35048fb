"""Checks shared by the partition tests: label strategies and what every partitioner promises."""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from shared.config import PartitionConfig
from shared.partition import client_indices, partition_indices

FAST = settings(max_examples=60, deadline=None)
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def label_arrays(draw: st.DrawFn, min_size: int = 1) -> np.ndarray:
    """Labels of 1 to 10 classes, possibly very unbalanced."""
    num_classes = draw(st.integers(1, 10))
    values = st.integers(0, num_classes - 1)
    return np.array(draw(st.lists(values, min_size=min_size, max_size=300)), dtype=np.int64)


def partition(
    labels: np.ndarray, num_partitions: int, config: PartitionConfig, seed: int
) -> list[np.ndarray]:
    """Return partition_indices of `labels` (positional arguments for brevity)."""
    return partition_indices(labels, num_partitions=num_partitions, config=config, seed=seed)


def check_common(
    labels: np.ndarray, num_partitions: int, config: PartitionConfig, seed: int
) -> list[np.ndarray]:
    """Check what every partitioner promises; return the partitions."""
    parts = partition(labels, num_partitions, config, seed)
    assert len(parts) == num_partitions
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
    again = partition(labels, num_partitions, config, seed)
    for partition_id, (part, same) in enumerate(zip(parts, again, strict=True)):
        np.testing.assert_array_equal(part, same)
        alone = client_indices(
            labels,
            partition_id=partition_id,
            num_partitions=num_partitions,
            config=config,
            seed=seed,
        )
        np.testing.assert_array_equal(alone, part)
    return parts


def assert_exact_cover(parts: list[np.ndarray], num_examples: int) -> None:
    """Assert every index of range(num_examples) is in exactly one part."""
    merged = np.concatenate(parts)
    assert len(merged) == num_examples
    np.testing.assert_array_equal(np.sort(merged), np.arange(num_examples))
