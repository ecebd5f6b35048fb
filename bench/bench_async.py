"""Time to accuracy with stragglers: synchronous rounds against FedBuff and FedAsync.

    .venv/bin/python bench/bench_async.py [--slowdown 5] [--slow-clients 7-9]
        [--target 0.9] [--out docs/img/async.png] [--runs-dir DIR]

Runs the demo federation (configs/demo.yaml: the 2NN on mnist5k, IID, 10 clients, 5 local
epochs) with clients `--slow-clients` training `--slowdown` times slower (the worker's
simulated compute slowdown), once per setting of MODES: synchronous FedAvg waiting for
every client; synchronous with close_at_threshold at 7 updates; FedBuff with buffers of 3
and of 5; FedAsync. Each setting gets about the same budget of client updates (ROUNDS).
Wall time is measured from the opening of the first round (version) to the close of each
one (the /history rows' `finished_at` and `duration_s`). "Wasted" counts the updates the
clients posted that no round aggregated (the run's timeline.csv against the rows'
participants): refused as too stale, for a closed round, or left over at the end. With
`--runs-dir` the run folders are kept, each with its timeline.png.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import markdown_table
from _experiments import REPO, Key, Run, accuracies, plan_or_exit, run_all

__all__ = ["MODES", "elapsed", "main", "planned_runs", "summary_rows", "time_to", "wasted"]

SYNC_ALL = "sync FedAvg, waits for all"
# Each setting's config overrides, and its number of rounds (versions) for ~150 updates.
MODES: dict[str, tuple[dict[str, Any], int]] = {
    SYNC_ALL: ({"min_fit_clients": 10}, 15),
    "sync, close_at_threshold 7": ({"min_fit_clients": 7, "close_at_threshold": True}, 20),
    "FedBuff K=3": ({"mode": "async", "async": {"buffer_size": 3}}, 50),
    "FedBuff K=5": ({"mode": "async", "async": {"buffer_size": 5}}, 30),
    "FedAsync a=0.6": ({"mode": "async", "async": {"algorithm": "fedasync"}}, 150),
}


def planned_runs(args: argparse.Namespace) -> dict[Key, dict[str, Any]]:
    """Return the overrides of every run, keyed by (stragglers label, mode label)."""
    slow = {"clients": args.slow_clients, "slowdown": args.slowdown}
    label = f"clients {args.slow_clients} {args.slowdown:g}x slower"
    base = {"num_partitions": 10, "min_available_clients": 10, "network": [slow]}
    return {
        (label, mode): base | overrides | {"num_rounds": rounds}
        for mode, (overrides, rounds) in MODES.items()
    }


def elapsed(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Return the wall time from the first round's opening to each round's close, in s."""
    if not rows:
        return []
    start = float(rows[0]["finished_at"]) - float(rows[0]["duration_s"])
    return [float(row["finished_at"]) - start for row in rows]


def time_to(rows: Sequence[Mapping[str, Any]], target: float) -> float | None:
    """Return the wall time when the test accuracy first reached `target`."""
    for row, seconds in zip(rows, elapsed(rows), strict=True):
        if row.get("eval_accuracy") is not None and float(row["eval_accuracy"]) >= target:
            return seconds
    return None


def wasted(run: Run) -> int | None:
    """Return the updates posted that no round aggregated (None without a timeline)."""
    if not run.timeline:
        return None
    posted = sum(client.updates for client in run.timeline)
    return posted - sum(len(row["participants"]) for row in run.rows)


def summary_rows(runs: Mapping[Key, Run], *, target: float) -> list[list[str]]:
    """Return per run: mode, rounds, updates, wall time, time to target, speedup, accuracy."""
    rows = []
    for (group, mode), run in runs.items():
        scores = accuracies(run.rows)
        if not scores:
            rows.append([mode, "failed", *["-"] * 6])
            continue
        reached = time_to(run.rows, target)
        reference = time_to(runs[(group, SYNC_ALL)].rows, target)
        speedup = f"{reference / reached:.2f}x" if reached and reference else "-"
        lost = wasted(run)
        rows.append(
            [
                mode,
                str(len(run.rows)),
                str(sum(len(row["participants"]) for row in run.rows)),
                "-" if lost is None else str(lost),
                f"{elapsed(run.rows)[-1]:.1f}",
                f"{reached:.1f}" if reached is not None else "not reached",
                speedup,
                f"{scores[-1]:.4f}{run.outcome()}",
            ]
        )
    return rows


def plot(runs: Mapping[Key, Run], out: Path, *, title: str, target: float) -> None:
    """Draw test accuracy against wall time, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = ["-", "--", "-.", ":", (0, (5, 1))]
    for ((_, mode), run), style in zip(runs.items(), styles, strict=False):
        scored = [
            (seconds, float(row["eval_accuracy"]))
            for row, seconds in zip(run.rows, elapsed(run.rows), strict=True)
            if row.get("eval_accuracy") is not None
        ]
        if scored:
            ax.plot(*zip(*scored, strict=True), linestyle=style, label=mode)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("wall time since the first round opened, s")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.7, 0.95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every mode, print the table, draw the figure; 2 if a config is refused."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--slow-clients", default="7-9")
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--target", type=float, default=0.9, help="test accuracy to reach")
    parser.add_argument("--worker-processes", type=int, default=10, help="one per client")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--runs-dir", type=Path, help="keep the run folders here")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "async.png")
    planned = plan_or_exit(parser, planned_runs, "bench/bench_async.py", argv)
    if planned is None:
        return 2
    args, settings = planned
    args.clients = 10
    results = run_all(settings, args)
    (group,) = {group for group, _ in settings}
    title = f"mlp on mnist5k, 10 clients, {group}"
    plot(results, args.out, title=title, target=args.target)
    print(f"{title}; wall time in s from the first round's opening")
    header = ["mode", "rounds", "updates used", "wasted", "wall s", f"s to {args.target:g}"]
    header += ["speedup", "final"]
    print(markdown_table(header, summary_rows(results, target=args.target)))
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
