"""The ``python -m shared.partition`` command and its table of each client's label histogram."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np

from shared.config import DatasetName, PartitionConfig, PartitionName
from shared.data import describe, load_dataset
from shared.errors import ConfigError, TributaryError
from shared.partition.core import partition_indices
from shared.partition.noise import noise_std

__all__ = ["main", "partition_report"]


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
    if config.name == "feature_noise":
        print(_noise_line(args.num_partitions, config.sigma))
    return 0


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


def _noise_line(num_clients: int, sigma: float) -> str:
    stds = (noise_std(client=k, num_clients=num_clients, sigma=sigma) for k in range(num_clients))
    return "noise std per client: " + " ".join(f"{std:.4g}" for std in stds)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.partition", description=main.__doc__)
    parser.add_argument("--dataset", choices=get_args(DatasetName), default="mnist5k")
    parser.add_argument("--partition", choices=get_args(PartitionName), default="iid")
    parser.add_argument("--num-partitions", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (beta)")
    parser.add_argument("--min-size", type=int, default=10, help="dirichlet, quantity")
    parser.add_argument("--balance", action="store_true", help="dirichlet: NIID-Bench's cap")
    parser.add_argument("--shards-per-client", type=int, default=2)
    parser.add_argument("--classes", help='labels per partition, e.g. "0,1;2,3;4,5"')
    parser.add_argument("--k", type=int, default=2, help="labels_per_client: labels per client")
    parser.add_argument("--sigma", type=float, default=0.1, help="feature_noise: largest std")
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
            min_size=args.min_size,
            balance=args.balance,
            shards_per_client=args.shards_per_client,
            classes=classes,
            k=args.k,
            sigma=args.sigma,
        )
    except ValueError as exc:  # also pydantic's ValidationError
        raise ConfigError(f"invalid partition options: {exc}") from None
