"""Label-skewed partitions: shards, dirichlet, labels_per_client (#C=k) and explicit classes."""

from __future__ import annotations

import numpy as np

from shared.errors import ConfigError
from shared.partition.quantity import MAX_DRAWS, require_examples, split_sizes

__all__ = ["classes_owner", "dirichlet_owner", "labels_per_client_owner", "shards_owner"]


def shards_owner(
    labels: np.ndarray, num_partitions: int, shards_per_client: int, rng: np.random.Generator
) -> np.ndarray:
    """Pathological non-IID of McMahan et al. 2017 (arXiv:1602.05629), section 3.

    Sort by label (ties in a seeded random order), cut into num_partitions *
    shards_per_client near-equal shards, and deal each client shards_per_client of them.
    """
    num_shards = num_partitions * shards_per_client
    require_examples(len(labels), num_shards, "shards")
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owner = np.empty(len(labels), dtype=np.int64)
    for position, shard_id in enumerate(rng.permutation(num_shards)):
        owner[shards[shard_id]] = position // shards_per_client
    return owner


def dirichlet_owner(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
    *,
    balance: bool = False,
) -> np.ndarray:
    """Label skew of Hsu et al. 2019 (arXiv:1909.06335): per class, client shares ~ Dir(alpha).

    All shares are redrawn until every client has min_size examples, the rule of Li et al.
    2022 (arXiv:2102.02079), who call alpha beta. With `balance`, as in their code, the
    classes are dealt in turn and a client already holding n / num_partitions examples
    gets no share of the next ones.
    """
    require_examples(len(labels), num_partitions * min_size, "dirichlet partitions")
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == label)) for label in classes]
    class_sizes = np.array([len(m) for m in members], dtype=np.int64)
    for _ in range(MAX_DRAWS):
        if balance:
            counts = _balanced_counts(class_sizes, num_partitions, alpha, rng)
        else:
            shares = rng.dirichlet(np.full(num_partitions, alpha), size=len(classes))  # (C, P)
            counts = split_sizes(shares, class_sizes)  # (C, P) examples of class c for client k
        if np.all(counts.sum(axis=0) >= min_size):
            owner = np.empty(len(labels), dtype=np.int64)
            for indices, class_counts in zip(members, counts, strict=True):
                owner[indices] = np.repeat(np.arange(num_partitions), class_counts)
            return owner
    raise ConfigError(
        f"dirichlet partitioning (alpha={alpha}, the papers' beta) of a dataset of "
        f"{len(labels)} examples among N={num_partitions} clients left a client with fewer "
        f"than min_size={min_size} examples in each of {MAX_DRAWS} draws; increase "
        "partition.alpha, lower partition.min_size or decrease num_partitions"
    )


def _balanced_counts(
    class_sizes: np.ndarray, num_partitions: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Deal the classes in turn by Dir(alpha) shares among the clients below n / P examples."""
    fair_share = class_sizes.sum() / num_partitions
    counts = np.zeros((len(class_sizes), num_partitions), dtype=np.int64)  # (C, P)
    for c, size in enumerate(class_sizes):
        open_clients = counts.sum(axis=0) < fair_share  # one at least: not all is dealt yet
        shares = rng.dirichlet(np.full(num_partitions, alpha)) * open_clients
        if shares.sum() == 0:  # every open client drew an underflowing share
            shares = open_clients.astype(np.float64)
        counts[c] = split_sizes(shares / shares.sum(), size)
    return counts


def labels_per_client_owner(
    labels: np.ndarray, num_partitions: int, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Label quantity skew #C=k of Li et al. 2022 (arXiv:2102.02079).

    With C = max(label) + 1 classes, client i holds label i mod C and k - 1 other distinct
    labels drawn at random; each label is split evenly among the clients holding it.
    """
    num_classes = int(labels.max()) + 1 if labels.size else 0
    if not 1 <= k <= num_classes:
        raise ConfigError(
            f"labels_per_client needs 1 <= partition.k <= the number of classes: "
            f"k={k}, {num_classes} classes"
        )
    chosen = []
    for client in range(num_partitions):
        own = client % num_classes
        others = rng.choice(np.delete(np.arange(num_classes), own), size=k - 1, replace=False)
        chosen.append([own, *others.tolist()])
    return classes_owner(labels, num_partitions, chosen, rng)


def classes_owner(
    labels: np.ndarray,
    num_partitions: int,
    classes: list[list[int]] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Explicit label lists; a class listed by several partitions is split evenly among them.

    The examples of a class go to its holders in a seeded random order, the first holders
    (in partition order) taking one more when they do not divide evenly.
    """
    if classes is None or len(classes) != num_partitions:
        given = "none" if classes is None else f"{len(classes)} lists"
        raise ConfigError(
            f"partition.classes must hold one label list per partition: expected "
            f"{num_partitions} lists (num_partitions), got {given}"
        )
    owner = np.full(len(labels), -1, dtype=np.int64)  # -1: in no partition
    for label in np.unique(labels):
        holders = [k for k, listed in enumerate(classes) if label in listed]
        if holders:
            members = rng.permutation(np.flatnonzero(labels == label))
            for holder, part in zip(holders, np.array_split(members, len(holders)), strict=True):
                owner[part] = holder
    return owner
