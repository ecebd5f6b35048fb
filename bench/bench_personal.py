"""What personalization buys: each client's local accuracy, global vs personalized model.

    .venv/bin/python bench/bench_personal.py [--experiment label-skew|feature-shift|all]
        [--rounds 20] [--alpha 0.1] [--sigma 1.0] [--clients 10]

Runs the demo federation (mnist5k, 5 local epochs) with `python -m shared.runs`, each
client holding 20% of its partition out of training (`local_test_fraction`). Every round
each client reports `local_accuracy`: the accuracy, on its held-out examples, of the model
it holds at the round's start (the global model under FedAvg; the global model with its
own local part when personalized). Two experiments:

- label-skew: the 2NN on a Dirichlet(alpha) label split; FedAvg against FedPer
  (`local_layers: ["5.*"]`, the 2NN's last layer kept by each client);
- feature-shift: the simple CNN with BatchNorm on an iid split where client i's inputs get
  Gaussian noise of std sigma * i / (N - 1) (`feature_noise`); FedAvg against FedBN
  (`fedbn: true`, every BatchNorm layer kept by each client).

Prints, per setting, the example-weighted mean, the spread and the range of that accuracy
over the clients in the last round and its mean over the last five rounds, beside the
server-side test accuracy of the global model (on clean test images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import machine_line, markdown_table

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]


def experiments(args: argparse.Namespace) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """Return experiment -> (its flags, setting -> the setting's own flags)."""
    return {
        "label-skew": (
            ["--model", "mlp", "--partition", "dirichlet", "--alpha", str(args.alpha)],
            {
                "FedAvg (global model)": [],
                "FedPer (own head: local_layers 5.*)": ["--set", 'local_layers=["5.*"]'],
            },
        ),
        "feature-shift": (
            [
                *("--model", "simple-cnn-bn", "--partition", "feature_noise"),
                *("--set", f"partition.sigma={args.sigma}"),
            ],
            {
                "FedAvg (global model)": [],
                "FedBN (own BatchNorm layers)": ["--set", "fedbn=true"],
            },
        ),
    }


def run(flags: list[str], *, rounds: int, clients: int, runs_dir: Path) -> list[dict[str, Any]]:
    """Run one federation; return its /history rows."""
    argv = [sys.executable, "-m", "shared.runs", "--config", str(REPO / "configs" / "demo.yaml")]
    argv += ["--clients", str(clients), "--rounds", str(rounds), "--no-live"]
    argv += ["--runs-dir", str(runs_dir), "--set", "local_test_fraction=0.2", *flags]
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True, text=True, timeout=1800)
    (run_dir,) = runs_dir.iterdir()
    rows: list[dict[str, Any]] = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    return rows


def _row(name: str, rows: list[dict[str, Any]]) -> list[str]:
    last = rows[-1]["metrics"]["local_accuracy"]
    recent = [row["metrics"]["local_accuracy"]["mean"] for row in rows[-5:]]
    return [
        name,
        f"{last['mean']:.4f}",
        f"{last['std']:.4f}",
        f"{last['min']:.3f}-{last['max']:.3f}",
        f"{statistics.mean(recent):.4f}",
        f"{rows[-1]['eval_accuracy']:.4f}",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Run every setting of the chosen experiments and print one table per experiment."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment", choices=["label-skew", "feature-shift", "all"], default="all"
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.1, help="label-skew: Dirichlet alpha")
    parser.add_argument("--sigma", type=float, default=1.0, help="feature-shift: largest std")
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}", flush=True)
    chosen = experiments(args)
    if args.experiment != "all":
        chosen = {args.experiment: chosen[args.experiment]}
    header = ["setting", "local accuracy, last round: mean", "std", "range"]
    header += ["mean over the last 5 rounds", "global model, server test set"]
    with tempfile.TemporaryDirectory(prefix="bench-personal-") as work:
        for number, (experiment, (flags, settings)) in enumerate(chosen.items()):
            print(
                f"\n{experiment}: {' '.join(flags)}, {args.clients} clients, "
                f"{args.rounds} rounds, 20% of each partition held out",
                flush=True,
            )
            table = []
            for index, (name, own) in enumerate(settings.items()):
                runs_dir = Path(work) / f"{number}-{index}"
                rows = run(flags + own, rounds=args.rounds, clients=args.clients, runs_dir=runs_dir)
                table.append(_row(name, rows))
            print(markdown_table(header, table), flush=True)


if __name__ == "__main__":
    main()
