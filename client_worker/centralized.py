"""Centralized baseline: the same model and training loop on the union of all training data.

    python -m client_worker.centralized --dataset mnist5k --model mlp --epochs 5

Prints the test loss and accuracy after each epoch and a final line: the reference that
federated runs are compared with. `--classes N` keeps only the first N classes (and a head
of N outputs), `--save PATH` writes the trained state_dict: a backbone to start a
federation from (`pretrained: PATH`, docs/models.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from client_worker.train import TrainConfig, derive_seed, seeded_global_rng, train
from shared.batches import ImageBatches
from shared.config import DatasetName
from shared.data import Dataset, load_dataset
from shared.errors import TributaryError
from shared.evaluation import EvalResult, evaluate
from shared.models import MODEL_NAMES, build_model

__all__ = ["EpochReport", "main", "run_centralized"]


@dataclass(frozen=True)
class EpochReport:
    """Training loss and test metrics after one epoch."""

    epoch: int
    train_loss: float
    train_seconds: float
    test: EvalResult

    def line(self) -> str:
        """Return the epoch's log line."""
        return (
            f"epoch {self.epoch}: train loss {self.train_loss:.4f}, test loss "
            f"{self.test.loss:.4f}, test accuracy {self.test.accuracy:.4f} "
            f"({self.train_seconds:.1f} s)"
        )


def run_centralized(
    dataset: Dataset,
    *,
    model_name: str,
    epochs: int,
    config: TrainConfig,
    seed: int = 0,
    report: Callable[[EpochReport], object] | None = None,
    save_to: Path | None = None,
) -> list[EpochReport]:
    """Train `model_name` on the whole training split, evaluating on the test split.

    With `save_to`, the trained state_dict is written there (torch.save, tensors only).
    """
    with seeded_global_rng(seed):  # the initial weights depend on the seed alone
        model = build_model(
            model_name,
            in_channels=dataset.in_channels,
            num_classes=dataset.num_classes,
            image_size=dataset.image_size,
        )
    images = ImageBatches.from_split(dataset.train)  # (N, C, H, W) pixels, no copy
    labels = torch.from_numpy(dataset.train.labels)
    test_images = ImageBatches.from_split(dataset.test)
    one_epoch = TrainConfig(
        local_epochs=1,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    reports = []
    for epoch in range(1, epochs + 1):
        # A fresh SGD per epoch: the momentum buffer restarts, as in one FL round.
        result = train(model, images, labels, one_epoch, seed=derive_seed(seed, epoch))
        test = evaluate(model, test_images, dataset.test.labels)
        epoch_report = EpochReport(epoch, result.train_loss, result.train_seconds, test)
        reports.append(epoch_report)
        if report is not None:
            report(epoch_report)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), save_to)
    return reports


def first_classes(dataset: Dataset, count: int) -> Dataset:
    """Keep only the examples of classes 0..count-1, for a model with `count` outputs."""
    if not 2 <= count <= dataset.num_classes:
        raise ValueError(f"--classes must be in 2..{dataset.num_classes}, got {count}")
    train, test = dataset.train, dataset.test
    return dataclasses.replace(
        dataset,
        train=train.subset(np.flatnonzero(train.labels < count)),
        test=test.subset(np.flatnonzero(test.labels < count)),
        num_classes=count,
        class_names=dataset.class_names[:count],
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the centralized baseline."""
    parser = argparse.ArgumentParser(
        prog="python -m client_worker.centralized",
        description="Train a model centrally on the whole training split (the FL baseline).",
    )
    parser.add_argument("--dataset", default="mnist5k", choices=get_args(DatasetName))
    parser.add_argument("--model", default="mlp", choices=MODEL_NAMES)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--classes", type=int, help="train on the first N classes only")
    parser.add_argument("--save", type=Path, help="write the trained state_dict here (.pt)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the centralized baseline and print one line per epoch plus a final line."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        dataset = load_dataset(
            args.dataset, data_dir=args.data_dir, download=args.download, seed=args.seed
        )
        if args.classes is not None:
            dataset = first_classes(dataset, args.classes)
        config = TrainConfig(
            local_epochs=1, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum
        )
    except (TributaryError, ValueError) as exc:
        print(f"centralized: {exc}", file=sys.stderr)
        return 2
    print(
        f"centralized {args.model} on {args.dataset}: {len(dataset.train)} train / "
        f"{len(dataset.test)} test examples, {args.epochs} epochs, batch {args.batch_size}, "
        f"lr {args.lr:g}, seed {args.seed}"
    )
    reports = run_centralized(
        dataset,
        model_name=args.model,
        epochs=args.epochs,
        config=config,
        seed=args.seed,
        report=lambda r: print(r.line(), flush=True),
        save_to=args.save,
    )
    total = sum(r.train_seconds for r in reports)
    final = reports[-1].test if reports else None
    accuracy = f"{final.accuracy:.4f}" if final is not None else "n/a"
    print(
        f"final: {args.model} {args.dataset} test accuracy {accuracy} after {args.epochs} "
        f"epochs ({total:.1f} s of training)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
