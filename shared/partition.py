"""Split a training set among `num_partitions` clients: iid, shards, dirichlet or classes.

Every partitioner is a pure function of (labels, num_partitions, config, seed), so each
client computes its own slice from its partition_id alone, with no coordination.
Run ``python -m shared.partition --help`` to print the label histogram of a partitioning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np

from shared.config import DatasetName, PartitionConfig
from shared.data import describe, load_dataset
from shared.errors import ConfigError, TributaryError

__all__ = [
    "DIRICHLET_MAX_TRIES",
    "DIRICHLET_MIN_SIZE",
    "client_indices",
    "main",
    "partition_indices",
    "partition_report",
]

DIRICHLET_MIN_SIZE = 1  # examples every client must get, else the proportions are redrawn
DIRICHLET_MAX_TRIES = 1000  # draws of all proportions before giving up
_STREAMS = {"iid": 1, "shards": 2, "dirichlet": 3, "classes": 4}


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
    if config.name == "iid":
        owner = _iid_owner(len(labels), num_partitions, rng)
    elif config.name == "shards":
        owner = _shards_owner(labels, num_partitions, config.shards_per_client, rng)
    elif config.name == "dirichlet":
        owner = _dirichlet_owner(labels, num_partitions, config.alpha, rng)
    else:
        owner = _classes_owner(labels, num_partitions, config.classes, rng)
    return _group(owner, num_partitions)


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


def partition_report(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> str:
    """Tabulate each client's number of examples and label histogram, plus a total row."""
    labels = np.asarray(labels)
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ConfigError(f"labels must lie in 0..{num_classes - 1} for num_classes={num_classes}")
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)  # (clients, classes)
    for partition_id, part in enumerate(parts):
        counts[partition_id] = np.bincount(labels[part], minlength=num_classes)
    table = [["client", "examples", *(str(k) for k in range(num_classes))]]
    table += [_report_row(str(k), row) for k, row in enumerate(counts)]
    table.append(_report_row("total", counts.sum(axis=0)))
    widths = [max(len(row[col]) for row in table) for col in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in table
    )


def _report_row(name: str, counts: np.ndarray) -> list[str]:
    return [name, str(counts.sum()), *(str(n) for n in counts.tolist())]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"labels must be a 1-d integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ConfigError(f"labels must be >= 0, got {labels.min()}")
    return labels


def _iid_owner(num_examples: int, num_partitions: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation cut into near-equal parts (sizes differ by at most 1)."""
    _require_examples(num_examples, num_partitions, "iid partitions")
    owner = np.empty(num_examples, dtype=np.int64)
    for partition_id, part in enumerate(
        np.array_split(rng.permutation(num_examples), num_partitions)
    ):
        owner[part] = partition_id
    return owner


def _shards_owner(
    labels: np.ndarray, num_partitions: int, shards_per_client: int, rng: np.random.Generator
) -> np.ndarray:
    """Pathological non-IID of McMahan et al. 2017 (arXiv:1602.05629), section 3.

    Sort by label (ties in a seeded random order), cut into num_partitions *
    shards_per_client near-equal shards, and deal each client shards_per_client of them.
    """
    num_shards = num_partitions * shards_per_client
    _require_examples(len(labels), num_shards, "shards")
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owner = np.empty(len(labels), dtype=np.int64)
    for position, shard_id in enumerate(rng.permutation(num_shards)):
        owner[shards[shard_id]] = position // shards_per_client
    return owner


def _dirichlet_owner(
    labels: np.ndarray, num_partitions: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Label skew of Hsu et al. 2019 (arXiv:1909.06335): per class, client shares ~ Dir(alpha).

    All shares are redrawn until every client has DIRICHLET_MIN_SIZE examples.
    """
    _require_examples(len(labels), num_partitions * DIRICHLET_MIN_SIZE, "dirichlet partitions")
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == label)) for label in classes]
    class_sizes = np.array([len(m) for m in members])
    for _ in range(DIRICHLET_MAX_TRIES):
        shares = rng.dirichlet(np.full(num_partitions, alpha), size=len(classes))  # (C, P)
        cuts = np.floor(np.cumsum(shares, axis=1) * class_sizes[:, None]).astype(np.int64)
        cuts[:, -1] = class_sizes  # the cumulative share may end a hair below 1
        counts = np.diff(cuts, axis=1, prepend=0)  # (C, P) examples of class c for client k
        if np.all(counts.sum(axis=0) >= DIRICHLET_MIN_SIZE):
            owner = np.empty(len(labels), dtype=np.int64)
            for indices, class_counts in zip(members, counts, strict=True):
                owner[indices] = np.repeat(np.arange(num_partitions), class_counts)
            return owner
    raise ConfigError(
        f"dirichlet partitioning (alpha={alpha}) of {len(labels)} examples left a client of "
        f"{num_partitions} with fewer than {DIRICHLET_MIN_SIZE} example(s) in each of "
        f"{DIRICHLET_MAX_TRIES} draws; increase partition.alpha or decrease num_partitions"
    )


def _classes_owner(
    labels: np.ndarray,
    num_partitions: int,
    classes: list[list[int]] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Explicit label lists; a class listed by several partitions is split evenly among them."""
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


def _group(owner: np.ndarray, num_partitions: int) -> list[np.ndarray]:
    """Turn an owner per example (-1 for none) into each partition's sorted indices."""
    unassigned = np.count_nonzero(owner < 0)
    order = np.argsort(owner, kind="stable").astype(np.int64)[unassigned:]  # sorted per owner
    sizes = np.bincount(owner[owner >= 0], minlength=num_partitions)
    return np.split(order, np.cumsum(sizes)[:-1])


def _require_examples(num_examples: int, needed: int, what: str) -> None:
    if num_examples < needed:
        raise ConfigError(
            f"cannot form {what}: {num_examples} examples are fewer than the {needed} needed; "
            "reduce num_partitions (or partition.shards_per_client)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the label histogram of each client's partition of a training split."""
    args = _parser().parse_args(argv)
    try:
        config = _partition_config(args)
        dataset = load_dataset(
            args.dataset, data_dir=args.data_dir, download=args.download, seed=args.seed
        )
        labels = dataset.train.labels
        parts = partition_indices(
            labels, num_partitions=args.num_partitions, config=config, seed=args.seed
        )
    except TributaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(dataset))
    print(partition_report(labels, parts, dataset.num_classes))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.partition", description=main.__doc__)
    parser.add_argument("--dataset", choices=get_args(DatasetName), default="mnist5k")
    parser.add_argument("--partition", choices=list(_STREAMS), default="iid")
    parser.add_argument("--num-partitions", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5, help="dirichlet concentration")
    parser.add_argument("--shards-per-client", type=int, default=2)
    parser.add_argument("--classes", help='labels per partition, e.g. "0,1;2,3;4,5"')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--download", action="store_true")
    return parser


def _partition_config(args: argparse.Namespace) -> PartitionConfig:
    try:
        classes = None
        if args.classes is not None:
            classes = [[int(x) for x in p.split(",") if x.strip()] for p in args.classes.split(";")]
        return PartitionConfig(
            name=args.partition,
            alpha=args.alpha,
            shards_per_client=args.shards_per_client,
            classes=classes,
        )
    except ValueError as exc:  # also pydantic's ValidationError
        raise ConfigError(f"invalid partition options: {exc}") from None


if __name__ == "__main__":
    raise SystemExit(main())
