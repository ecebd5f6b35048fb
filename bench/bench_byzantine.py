"""How aggregation strategies stand up to byzantine clients: test accuracy under attack.

    .venv/bin/python bench/bench_byzantine.py [--rounds 20] [--clients 10] [--byzantine 0-1]
        [--strategy krum:num_malicious_clients=2 ...] [--attack gaussian:std=1.0 ...]

Runs the demo federation (configs/demo.yaml: the 2NN on mnist5k, IID, 5 local epochs)
with `python -m shared.runs`: first honest, with FedAvg; then, for each attack, with each
strategy, the clients of `--byzantine` (2 of 10 by default) sending that attack in place
of their trained weights (the config's `byzantine` list, docs/worker.md). Prints a
markdown table of the server's final and best test accuracy per strategy and setting,
with the command and the machine. Strategies and attacks are specs,
``[label=]name[:key=value,...]`` (bench/_experiments.py); every run's config is checked
before the first run starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from _common import markdown_table
from _experiments import (
    Key,
    Run,
    Spec,
    accuracies,
    add_run_arguments,
    describe,
    parse_spec,
    plan_or_exit,
    run_all,
    strategy_overrides,
)

__all__ = ["main", "planned_runs", "results_table"]

STRATEGIES = [
    "fedavg",
    "fedmedian",
    "fedtrimmedavg:beta=0.2",
    "krum:num_malicious_clients=2",
    # Multi-Krum (Blanchard et al. 2017): the mean of the m updates Krum scores best, m = n - f
    "multi-krum=krum:num_malicious_clients=2,num_clients_to_keep=8",
]
ATTACKS = ["sign-flip x10=sign_flip:scale=10", "gaussian std 1=gaussian:std=1.0"]
HONEST = "honest"
HONEST_STRATEGY = "fedavg"


def planned_runs(args: argparse.Namespace) -> dict[Key, dict[str, Any]]:
    """Return the overrides of every run, keyed by (strategy label, setting label)."""
    base = {"num_partitions": args.clients, "num_rounds": args.rounds}
    strategies: list[Spec] = [parse_spec(text) for text in args.strategy or STRATEGIES]
    attacks: list[Spec] = [parse_spec(text) for text in args.attack or ATTACKS]
    runs: dict[Key, dict[str, Any]] = {}
    honest = strategies if args.honest_all else [parse_spec(HONEST_STRATEGY)]
    for spec in honest:
        runs[spec.label, HONEST] = base | strategy_overrides(spec) | {"byzantine": []}
    for attack in attacks:
        entry = {"clients": args.byzantine, "attack": attack.name, **attack.params}
        for spec in strategies:
            runs[spec.label, attack.label] = (
                base | strategy_overrides(spec) | {"byzantine": [entry]}
            )
    return runs


def results_table(runs: dict[Key, Run]) -> str:
    """Render strategy x setting: final and best test accuracy."""
    settings = list(dict.fromkeys(setting for _, setting in runs))
    strategies = list(dict.fromkeys(strategy for strategy, _ in runs))
    header = ["strategy"]
    for setting in settings:
        header += [f"{setting}: final", "best"]
    rows = []
    for strategy in strategies:
        row = [strategy]
        for setting in settings:
            row += _cells(runs.get((strategy, setting)))
        rows.append(row)
    return markdown_table(header, rows)


def _cells(run: Run | None) -> list[str]:
    if run is None:
        return ["-", "-"]
    scores = accuracies(run.rows)
    if not scores:
        return ["failed", "-"]
    return [f"{scores[-1]:.4f}{run.outcome()}", f"{max(scores):.4f}"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every setting and print the table; 2 when a config is refused."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, rounds=20, strategies=STRATEGIES, timeout_s=600.0)
    parser.add_argument("--byzantine", default="0-1", help="the attackers' ids (default 0-1)")
    parser.add_argument(
        "--attack",
        action="append",
        metavar="SPEC",
        help="[label=]attack[:key=value,...], repeatable (default: " + ", ".join(ATTACKS) + ")",
    )
    parser.add_argument(
        "--honest-all", action="store_true", help="run every strategy without attackers too"
    )
    planned = plan_or_exit(parser, planned_runs, "bench/bench_byzantine.py", argv)
    if planned is None:
        return 2
    args, settings = planned
    results = run_all(settings, args)
    print(f"{describe(args)}, byzantine clients {args.byzantine}; the server's test accuracy")
    print(results_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
