"""Strategies compared on label-skewed clients: test accuracy per round, in a table and a figure.

    .venv/bin/python bench/bench_compare.py [--rounds 30] [--clients 10] [--alpha 0.3] [--k 2]
        [--strategy fedadam:eta=0.01,tau=0.001 ...] [--out docs/img/compare.png]

Runs the demo federation (configs/demo.yaml: the 2NN on mnist5k, 5 local epochs) with
`python -m shared.runs` once per strategy on each of two label-skewed splits: Dirichlet
(`--alpha`, default 0.3) and #C=k (`labels_per_client`, each client holding `--k`
labels, default 2). Prints a markdown table of the server's final and best test accuracy
and the first round reaching 90% of the best, per split and strategy, with the command
and the machine; draws the test accuracy per round, one panel per split, into `--out`.
Strategies are specs, ``[label=]name[:key=value,...]`` (bench/_experiments.py); every
run's config is checked before the first run starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import markdown_table
from _experiments import (
    REPO,
    Key,
    Run,
    accuracies,
    add_run_arguments,
    describe,
    parse_spec,
    plan_or_exit,
    rounds_to_reach,
    run_all,
    strategy_overrides,
)

__all__ = ["main", "planned_runs", "plot", "summary_rows"]

STRATEGIES = [
    "fedavg",
    "fedavgm",
    "fedprox:mu=0.01",
    # Reddi et al. 2021 (https://arxiv.org/abs/2003.00295) tune the server step eta per
    # task, tau = 1e-3. An adaptive step moves a weight by up to about eta: 0.01 stays
    # below the 2NN's initial weights (uniform within +-0.036 to +-0.071)
    "fedadam:eta=0.01,tau=0.001",
    "fedyogi:eta=0.01,tau=0.001",
    "scaffold",
]
REACH = 0.9  # "rounds to reach": the first round at this share of the run's best accuracy


def _splits(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Return each split's label and its partition section."""
    return {
        f"Dirichlet({args.alpha:g})": {"name": "dirichlet", "alpha": args.alpha},
        f"#C={args.k}": {"name": "labels_per_client", "k": args.k},
    }


def planned_runs(args: argparse.Namespace) -> dict[Key, dict[str, Any]]:
    """Return the overrides of every run, keyed by (split label, strategy label)."""
    base = {"num_partitions": args.clients, "num_rounds": args.rounds}
    specs = [parse_spec(text) for text in args.strategy or STRATEGIES]
    return {
        (split, spec.label): base | {"partition": partition} | strategy_overrides(spec)
        for split, partition in _splits(args).items()
        for spec in specs
    }


def summary_rows(runs: Mapping[Key, Run]) -> list[list[str]]:
    """Return per run: split, strategy, final and best accuracy, rounds to reach 90% of it."""
    rows = []
    for (split, strategy), run in runs.items():
        scores = accuracies(run.rows)
        if not scores:
            rows.append([split, strategy, "failed", "-", "-"])
            continue
        reach = rounds_to_reach(run.rows, REACH)
        final = f"{scores[-1]:.4f}{run.outcome()}"
        rows.append([split, strategy, final, f"{max(scores):.4f}", str(reach)])
    return rows


def plot(runs: Mapping[Key, Run], out: Path, *, title: str) -> None:
    """Draw test accuracy against round, one line per strategy, one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    splits = list(dict.fromkeys(split for split, _ in runs))
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.5), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for (where, strategy), run in runs.items():
            scored = [r for r in run.rows if r.get("eval_accuracy") is not None]
            if where == split and scored:
                rounds = [r["round"] for r in scored]
                ax.plot(rounds, [r["eval_accuracy"] for r in scored], label=strategy)
        ax.set_title(split)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every split and strategy, print the table, draw the figure; 2 on a refused config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, rounds=30, strategies=STRATEGIES, timeout_s=900.0)
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration")
    parser.add_argument("--k", type=int, default=2, help="labels per client of the #C=k split")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "compare.png")
    planned = plan_or_exit(parser, planned_runs, "bench/bench_compare.py", argv)
    if planned is None:
        return 2
    args, settings = planned
    results = run_all(settings, args)
    title = describe(args)
    plot(results, args.out, title=title)
    print(f"{title}; the server's test accuracy; figure: {args.out}")
    header = ["split", "strategy", "final", "best", f"rounds to {REACH:.0%} of best"]
    print(markdown_table(header, summary_rows(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
