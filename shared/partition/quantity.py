"""Partitions that ignore labels: iid (equal sizes) and quantity skew (Dirichlet sizes)."""

from __future__ import annotations

import numpy as np

from shared.errors import ConfigError

__all__ = ["MAX_DRAWS", "iid_owner", "quantity_owner", "require_examples"]

MAX_DRAWS = 1000  # draws of the Dirichlet proportions before giving up on min_size


def iid_owner(num_examples: int, num_partitions: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation cut into near-equal parts (sizes differ by at most 1)."""
    require_examples(num_examples, num_partitions, "iid partitions")
    owner = np.empty(num_examples, dtype=np.int64)
    for partition_id, part in enumerate(
        np.array_split(rng.permutation(num_examples), num_partitions)
    ):
        owner[part] = partition_id
    return owner


def quantity_owner(
    num_examples: int,
    num_partitions: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Quantity skew of Li et al. 2022 (arXiv:2102.02079).

    Client sizes are proportional to one Dir(alpha) draw over clients, redrawn until every
    client gets min_size examples; which examples each client gets is IID.
    """
    require_examples(num_examples, num_partitions * min_size, "quantity partitions")
    for _ in range(MAX_DRAWS):
        shares = rng.dirichlet(np.full(num_partitions, alpha))
        sizes = split_sizes(shares, num_examples)
        if sizes.min() >= min_size:
            owner = np.empty(num_examples, dtype=np.int64)
            owner[rng.permutation(num_examples)] = np.repeat(np.arange(num_partitions), sizes)
            return owner
    raise ConfigError(
        f"quantity partitioning (alpha={alpha}, the papers' beta) of a dataset of "
        f"{num_examples} examples among N={num_partitions} clients left a client with fewer "
        f"than min_size={min_size} examples in each of {MAX_DRAWS} draws; increase "
        "partition.alpha, lower partition.min_size or decrease num_partitions"
    )


def split_sizes(shares: np.ndarray, total: int | np.ndarray) -> np.ndarray:
    """Cut `total` items by cumulative `shares` (last axis); the sizes sum to `total` exactly."""
    cuts = np.floor(np.cumsum(shares, axis=-1) * np.asarray(total)[..., None]).astype(np.int64)
    cuts = np.minimum(cuts, np.asarray(total)[..., None])  # a share sum may pass 1 by a hair
    cuts[..., -1] = total  # ... or end a hair below 1
    return np.diff(cuts, axis=-1, prepend=0)


def require_examples(num_examples: int, needed: int, what: str) -> None:
    """Fail with a ConfigError if `num_examples` cannot make `what`."""
    if num_examples < needed:
        raise ConfigError(
            f"cannot form {what}: {num_examples} examples are fewer than the {needed} needed; "
            "reduce num_partitions (or partition.shards_per_client, partition.min_size)"
        )
