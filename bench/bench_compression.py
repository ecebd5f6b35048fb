"""Communication efficiency: each update encoding's bytes on the wire and the accuracy it costs.

    .venv/bin/python bench/bench_compression.py [--rounds 20] [--clients 10] [--alpha 0.3]
        [--strategy fedavg] [--worker-processes 2]

Runs the demo federation (configs/demo.yaml: the 2NN on mnist5k, 5 local epochs) with
`python -m shared.runs` once per encoding on an IID split and a Dirichlet(`--alpha`)
split: no compression, then the `compression:` sections in ENCODINGS. Prints a markdown
table with, per split and encoding, the server's final and best test accuracy, the loss
in points against the uncompressed run of the same split, and the uplink and downlink
megabytes per round with their compression ratio (bytes as plain float32 tensors /
bytes sent, from the /history rows' raw_bytes_* and bytes_*).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from _common import markdown_table
from _experiments import (
    Key,
    Run,
    accuracies,
    add_run_arguments,
    describe,
    parse_spec,
    plan_or_exit,
    run_all,
    strategy_overrides,
)

from shared.errors import ConfigError

__all__ = ["ENCODINGS", "main", "planned_runs", "summary_rows"]

NONE = "none"
ENCODINGS: dict[str, dict[str, Any] | None] = {
    NONE: None,
    "f16": {"encoding": "f16"},
    "q8": {"encoding": "q8"},
    "q4": {"encoding": "q4"},
    # error feedback is on by default for topk; values as 8-bit codes
    "top-k 0.1 + EF": {"encoding": "topk", "fraction": 0.1, "values": "q8"},
    "top-k 0.01 + EF": {"encoding": "topk", "fraction": 0.01, "values": "q8"},
}
BYTES_PER_MB = 1_000_000


def _splits(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    splits = {"IID": {"name": "iid"}, f"Dirichlet({args.alpha:g})": {"name": "dirichlet"}}
    wanted = getattr(args, "splits", None) or ["iid", "dirichlet"]
    return {label: split for label, split in splits.items() if split["name"] in wanted}


def _encodings(args: argparse.Namespace) -> dict[str, dict[str, Any] | None]:
    wanted = getattr(args, "encodings", None)
    if not wanted:
        return ENCODINGS
    unknown = sorted(set(wanted) - set(ENCODINGS))
    if unknown:
        raise ConfigError(f"--encodings: unknown {unknown}; known: {list(ENCODINGS)}")
    return {label: ENCODINGS[label] for label in wanted}


def planned_runs(args: argparse.Namespace) -> dict[Key, dict[str, Any]]:
    """Return the overrides of every run, keyed by (split label, encoding label)."""
    base = {"num_partitions": args.clients, "num_rounds": args.rounds}
    strategy = strategy_overrides(parse_spec((args.strategy or ["fedavg"])[-1]))
    plan: dict[Key, dict[str, Any]] = {}
    for split, partition in _splits(args).items():
        if partition["name"] == "dirichlet":
            partition = partition | {"alpha": args.alpha}
        for label, compression in _encodings(args).items():
            overrides = base | {"partition": partition} | strategy
            if compression is not None:
                overrides["compression"] = compression
            plan[(split, label)] = overrides
    return plan


def _per_round(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    """Return the mean of `key` over the rounds after the first, in MB."""
    later = [row for row in rows if row["round"] > 1] or list(rows)
    return sum(row.get(key) or 0 for row in later) / max(len(later), 1) / BYTES_PER_MB


def _ratio(rows: Sequence[Mapping[str, Any]], direction: str) -> float | None:
    """Return raw / sent bytes over the run; a row without its raw figure counts as sent."""
    sent = raw = 0
    for row in rows:
        sent += row.get(f"bytes_{direction}") or 0
        raw += row.get(f"raw_bytes_{direction}", row.get(f"bytes_{direction}")) or 0
    return raw / sent if sent else None


def summary_rows(runs: Mapping[Key, Run]) -> list[list[str]]:
    """Return per run: split, encoding, accuracy, loss vs none, bytes up and down, ratios."""
    rows = []
    for (split, label), run in runs.items():
        scores = accuracies(run.rows)
        if not scores:
            rows.append([split, label, "failed", *["-"] * 6])
            continue
        reference = accuracies(runs[(split, NONE)].rows) if (split, NONE) in runs else []
        loss = f"{(reference[-1] - scores[-1]) * 100:+.1f}" if reference else "-"
        up, down = _ratio(run.rows, "in"), _ratio(run.rows, "out")
        rows.append(
            [
                split,
                label,
                f"{scores[-1]:.4f}{run.outcome()}",
                f"{max(scores):.4f}",
                loss,
                f"{_per_round(run.rows, 'bytes_in'):.3f}",
                f"{up:.1f}x" if up is not None else "-",
                f"{_per_round(run.rows, 'bytes_out'):.3f}",
                f"{down:.1f}x" if down is not None else "-",
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run every split and encoding and print the table; 2 on a refused config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, rounds=20, strategies=["fedavg"], timeout_s=600.0)
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration")
    parser.add_argument("--splits", nargs="+", choices=["iid", "dirichlet"], help="default: both")
    parser.add_argument("--encodings", nargs="+", metavar="LABEL", help="default: all of them")
    planned = plan_or_exit(parser, planned_runs, "bench/bench_compression.py", argv)
    if planned is None:
        return 2
    args, settings = planned
    results = run_all(settings, args)
    print(f"{describe(args)}; the server's test accuracy; MB per round after round 1")
    header = ["split", "encoding", "final", "best", "loss (points)"]
    header += ["uplink MB/round", "uplink ratio", "downlink MB/round", "downlink ratio"]
    print(markdown_table(header, summary_rows(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
