"""What personalization buys on label-skewed clients: local accuracy, global vs personalized.

    .venv/bin/python bench/bench_personal.py [--rounds 20] [--alpha 0.1] [--clients 10]

Runs the demo federation (the 2NN on mnist5k, 5 local epochs) with `python -m shared.runs`
on a Dirichlet(alpha) label-skewed split, each client holding 20% of its partition out of
training (`local_test_fraction`). Every round each client reports `local_accuracy`: the
accuracy, on its held-out examples, of the model it holds at the round's start: the
global model under FedAvg, the global model with its own head under FedPer
(`local_layers: ["5.*"]`, the 2NN's last layer). Prints, per setting, the example-weighted
mean, the spread and the range of that accuracy over the clients in the last round and
its mean over the last five rounds, beside the server-side test accuracy of the global
model.
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
SETTINGS = {
    "FedAvg (global model)": [],
    "FedPer (own head: local_layers 5.*)": ["--set", 'local_layers=["5.*"]'],
}


def run(
    name: str, flags: list[str], *, rounds: int, alpha: float, clients: int, work: Path
) -> list[dict[str, Any]]:
    """Run one federation; return its /history rows."""
    runs_dir = work / name.split()[0].lower()
    argv = [sys.executable, "-m", "shared.runs", "--config", str(REPO / "configs" / "demo.yaml")]
    argv += ["--clients", str(clients), "--rounds", str(rounds), "--no-live"]
    argv += ["--partition", "dirichlet", "--alpha", str(alpha), "--runs-dir", str(runs_dir)]
    argv += ["--set", "local_test_fraction=0.2", *flags]
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
    """Run every setting and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}", flush=True)
    print(
        f"mlp on mnist5k, {args.clients} clients, Dirichlet({args.alpha:g}) labels, "
        f"{args.rounds} rounds, 20% of each partition held out",
        flush=True,
    )
    table = []
    with tempfile.TemporaryDirectory(prefix="bench-personal-") as work:
        for name, flags in SETTINGS.items():
            rows = run(
                name,
                flags,
                rounds=args.rounds,
                alpha=args.alpha,
                clients=args.clients,
                work=Path(work),
            )
            table.append(_row(name, rows))
    header = ["setting", "local accuracy, last round: mean", "std", "range"]
    header += ["mean over the last 5 rounds", "global model, server test set"]
    print(markdown_table(header, table))


if __name__ == "__main__":
    main()
