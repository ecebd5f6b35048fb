"""Sample-level DP-SGD: test accuracy against each client's epsilon, at several noise levels.

    .venv/bin/python bench/bench_dp_sgd.py [--rounds 20] [--clients 10] [--noise 0.7 ...]
        [--clip 1.0] [--delta 1e-5] [--reference-lr 0.05] [--out docs/img/dp-sgd.png]

Runs configs/dp-sgd.yaml (the 2NN on mnist5k, ten IID clients of 400 examples) with
`python -m shared.runs`: once without DP-SGD, as the reference, then once per noise
multiplier sigma, every client clipping each example's gradient to `--clip` and counting
its own (epsilon, `--delta`) with Opacus's RDP accountant. No budget is set, so every
run trains all its rounds. The reference trains at `--reference-lr`, the demo's rate:
the config's 0.5, right for clipped and noisy gradients, makes plain SGD diverge. Prints
a markdown table of the server's final and best test accuracy with the clients' epsilon
after the last round (the largest, and the range over the clients), and draws accuracy
against round and against the largest client epsilon.
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
    run_all,
    strategy_overrides,
)

__all__ = ["client_epsilons", "main", "planned_runs", "plot", "results_table"]

NOISE_MULTIPLIERS = [0.7, 1.0, 2.0]
NO_DP = "no DP"
COLUMN = "dp-sgd"  # every run is one row of the table; the key's second part is constant


def _label(noise: float) -> str:
    return f"sigma {noise:g}"


def planned_runs(args: argparse.Namespace) -> dict[Key, dict[str, Any]]:
    """Return the overrides of every run: no DP-SGD first, then each noise multiplier."""
    base = {"num_partitions": args.clients, "num_rounds": args.rounds}
    if args.strategy:  # the last --strategy, for every run (default: the config's fedavg)
        base |= strategy_overrides(parse_spec(args.strategy[-1]))
    reference = base | {"dp_sgd": None, "lr": args.reference_lr}
    runs: dict[Key, dict[str, Any]] = {(f"{NO_DP} (lr {args.reference_lr:g})", COLUMN): reference}
    for noise in args.noise or NOISE_MULTIPLIERS:
        section = {"noise_multiplier": noise, "max_grad_norm": args.clip, "delta": args.delta}
        runs[_label(noise), COLUMN] = base | {"dp_sgd": section | {"target_epsilon": None}}
    return runs


def client_epsilons(run: Run) -> tuple[float, float] | None:
    """Return the smallest and largest client epsilon after the run's last round."""
    if not run.rows:
        return None
    summary = (run.rows[-1].get("metrics") or {}).get("dp_epsilon")
    if summary is None:
        return None
    return float(summary["min"]), float(summary["max"])


def results_table(runs: Mapping[Key, Run], settings: Mapping[Key, Mapping[str, Any]]) -> str:
    """Render one row per run: sigma, final and best accuracy, the clients' epsilon."""
    header = ["setting", "sigma", "C", "rounds", "final accuracy", "best", "epsilon (max)"]
    header.append("epsilon range over clients")
    rows = []
    for key, run in runs.items():
        section = settings[key].get("dp_sgd") or {}
        scores = accuracies(run.rows)
        final = f"{scores[-1]:.4f}{run.outcome()}" if scores else "failed"
        best = f"{max(scores):.4f}" if scores else "-"
        spent = client_epsilons(run)
        rows.append(
            [
                key[0],
                f"{section['noise_multiplier']:g}" if section else "-",
                f"{section['max_grad_norm']:g}" if section else "-",
                str(len(run.rows)),
                final,
                best,
                f"{spent[1]:.2f}" if spent else "-",
                f"{spent[0]:.2f} - {spent[1]:.2f}" if spent else "-",
            ]
        )
    return markdown_table(header, rows)


def plot(runs: Mapping[Key, Run], out: Path, *, title: str) -> None:
    """Draw accuracy against round (left) and against the largest client epsilon (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    by_round, by_epsilon = figure.subplots(1, 2)
    for (label, _), run in runs.items():
        scored = [row for row in run.rows if row.get("eval_accuracy") is not None]
        rounds = [row["round"] for row in scored]
        accuracy = [row["eval_accuracy"] for row in scored]
        (line,) = by_round.plot(rounds, accuracy, marker="o", markersize=3, label=label)
        private = [row for row in scored if row.get("dp_sgd_epsilon_max") is not None]
        if private:
            epsilon = [row["dp_sgd_epsilon_max"] for row in private]
            by_epsilon.plot(
                epsilon,
                [row["eval_accuracy"] for row in private],
                marker="o",
                markersize=3,
                color=line.get_color(),
                label=label,
            )
        elif accuracy:
            by_epsilon.axhline(accuracy[-1], color=line.get_color(), ls="--", label=label)
    by_round.set(xlabel="round", ylabel="test accuracy", title="accuracy per round")
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epsilon.set(
        xlabel="largest client epsilon so far",
        ylabel="test accuracy",
        title="accuracy against privacy spent",
    )
    for ax in (by_round, by_epsilon):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the reference and each noise level, print the table, draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, rounds=20, strategies=["fedavg"], timeout_s=900.0)
    parser.set_defaults(config=REPO / "configs" / "dp-sgd.yaml")
    parser.add_argument(
        "--noise",
        type=float,
        action="append",
        help="a noise multiplier sigma, repeatable (default: "
        + ", ".join(f"{n:g}" for n in NOISE_MULTIPLIERS)
        + ")",
    )
    parser.add_argument("--clip", type=float, default=1.0, help="max_grad_norm C (default 1)")
    parser.add_argument("--delta", type=float, default=1e-5, help="delta (default 1e-5)")
    parser.add_argument(
        "--reference-lr", type=float, default=0.05, help="the no-DP run's lr (default 0.05)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dp-sgd.png")
    planned = plan_or_exit(parser, planned_runs, "bench/bench_dp_sgd.py", argv)
    if planned is None:
        return 2
    args, settings = planned
    results = run_all(settings, args)
    title = f"{describe(args)}, DP-SGD delta {args.delta:g}"
    plot(results, args.out, title=title)
    print(f"{title}; the server's test accuracy; figure: {args.out}")
    print(results_table(results, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
