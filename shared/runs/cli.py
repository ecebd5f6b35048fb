"""The runner's command line: its flags, and the experiment config they resolve to."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

from shared.config import (
    DatasetName,
    ExperimentConfig,
    PartitionName,
    config_source,
    load_config,
    parse_overrides,
)

__all__ = ["PROG", "build_parser", "resolve_config"]

PROG = "python -m shared.runs"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the runner."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run one aggregator and N workers on 127.0.0.1 with a live view."
    )
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--clients", type=int, help="number of clients (= num_partitions)")
    parser.add_argument(
        "--worker-processes",
        type=_positive_int,
        metavar="N",
        help="run the clients as virtual clients of N worker processes (default: one process "
        "per client up to 32 clients, one per core beyond)",
    )
    parser.add_argument(
        "--train-slots",
        type=_positive_int,
        help="with --worker-processes: trainings at once per process (default: cores // N, "
        "at least 1: one training per core)",
    )
    parser.add_argument("--rounds", type=int, help="num_rounds")
    parser.add_argument("--model", help="model name, e.g. mlp, mlp-128, cnn, resnet18")
    parser.add_argument("--dataset", choices=get_args(DatasetName))
    parser.add_argument("--partition", choices=get_args(PartitionName))
    parser.add_argument("--alpha", type=float, help="Dirichlet concentration (partition.alpha)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--port", type=int, default=0, help="aggregator port (0: a free one)")
    parser.add_argument("--no-live", action="store_true", help="one line per round instead")
    return parser


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    """Load the YAML with --set overrides, then the flags; cap min_* clients at --clients."""
    overrides = parse_overrides(args.overrides)
    flags = {"num_partitions": args.clients, "num_rounds": args.rounds}
    flags |= {"model": args.model, "dataset": args.dataset}
    overrides |= {key: value for key, value in flags.items() if value is not None}
    partition = {"name": args.partition, "alpha": args.alpha}
    for key, value in partition.items():
        if value is not None:
            overrides.setdefault("partition", {})[key] = value
    # cap before validating: a strategy may check min_fit_clients against the clients
    source = config_source(args.config, overrides)
    n = _count(source, "num_partitions")
    for key in ("min_available_clients", "min_fit_clients"):
        value = _count(source, key)
        if n is not None and value is not None and value > n:
            overrides[key] = n
    return load_config(args.config, overrides)


def _count(source: dict[str, Any], key: str) -> int | None:
    """Return an integer setting of an unvalidated config (None if it is not one)."""
    value = source.get(key, ExperimentConfig.model_fields[key].default)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # load_config names the bad value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
