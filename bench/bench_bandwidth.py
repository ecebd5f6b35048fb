"""Time to accuracy over capped links: compressed against uncompressed updates.

    .venv/bin/python bench/bench_bandwidth.py [--bandwidth-mbit 20 5] [--rounds 15]
        [--target 0.9] [--jitter-ms 20] [--out docs/img/bandwidth.png]

Runs the demo federation (configs/demo.yaml: the 2NN on mnist5k, IID, 10 clients) with
every client's link capped at each `--bandwidth-mbit` (the worker's simulated network:
each request and response sleeps its bytes at that rate, plus an exponential delay of
mean `--jitter-ms`), once per setting of ENCODINGS (the uplink `compression` and the
downlink `download_compression` sections). One worker process per client by
default, so each client has its own link. A round's wall time is its /history
`duration_s` (from the round's opening to its close); the table gives, per run, the mean
round time, the MB up and down per round, the final accuracy, and the wall time until the
server's test accuracy first reached `--target`. The figure draws test accuracy against
the accumulated wall time, one panel per bandwidth.
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
    plan_or_exit,
    run_all,
)

__all__ = ["ENCODINGS", "main", "planned_runs", "summary_rows", "time_to", "wall_times"]

NONE = "none"
Q8_DOWN = {"download_compression": {"encoding": "q8"}}
# Each setting's config sections: uplink `compression`, downlink `download_compression`.
ENCODINGS: dict[str, dict[str, Any]] = {
    NONE: {},
    "q8 up": {"compression": {"encoding": "q8"}},
    "q8 up, q8 down": {"compression": {"encoding": "q8"}} | Q8_DOWN,
    "top-k 0.1 + EF up, q8 down": {
        "compression": {"encoding": "topk", "fraction": 0.1, "values": "q8"}
    }
    | Q8_DOWN,
    "top-k 0.01 + EF up, q8 down": {
        "compression": {"encoding": "topk", "fraction": 0.01, "values": "q8"}
    }
    | Q8_DOWN,
}
BYTES_PER_MB = 1_000_000


def _label(mbit: float) -> str:
    return f"{mbit:g} Mbit/s"


def planned_runs(args: argparse.Namespace) -> dict[Key, dict[str, Any]]:
    """Return the overrides of every run, keyed by (bandwidth label, encoding label)."""
    plan: dict[Key, dict[str, Any]] = {}
    for mbit in args.bandwidth_mbit:
        link = {"clients": "all", "bandwidth_mbit": mbit}
        if args.jitter_ms > 0:
            link |= {"jitter": "exponential", "jitter_ms": args.jitter_ms}
        base = {"num_partitions": args.clients, "num_rounds": args.rounds, "network": [link]}
        for label, sections in ENCODINGS.items():
            plan[(_label(mbit), label)] = base | sections
    return plan


def wall_times(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Return the wall time accumulated at the close of each round, in seconds."""
    total, times = 0.0, []
    for row in rows:
        total += float(row.get("duration_s") or 0.0)
        times.append(total)
    return times


def time_to(rows: Sequence[Mapping[str, Any]], target: float) -> float | None:
    """Return the accumulated wall time when the test accuracy first reached `target`."""
    for row, elapsed in zip(rows, wall_times(rows), strict=True):
        if row.get("eval_accuracy") is not None and float(row["eval_accuracy"]) >= target:
            return elapsed
    return None


def summary_rows(runs: Mapping[Key, Run], *, target: float) -> list[list[str]]:
    """Return per run: link, encodings, round time, MB up and down, accuracy, time to target."""
    rows = []
    for (link, label), run in runs.items():
        scores = accuracies(run.rows)
        if not scores:
            rows.append([link, label, "failed", *["-"] * 5])
            continue
        reached = time_to(run.rows, target)
        reference = time_to(runs[(link, NONE)].rows, target) if (link, NONE) in runs else None
        speedup = f"{reference / reached:.2f}x" if reached and reference else "-"
        uplink = sum(row.get("bytes_in") or 0 for row in run.rows) / len(run.rows)
        downlink = sum(row.get("bytes_out") or 0 for row in run.rows) / len(run.rows)
        rows.append(
            [
                link,
                label,
                f"{wall_times(run.rows)[-1] / len(run.rows):.2f}",
                f"{uplink / BYTES_PER_MB:.3f}",
                f"{downlink / BYTES_PER_MB:.3f}",
                f"{scores[-1]:.4f}{run.outcome()}",
                f"{reached:.1f}" if reached is not None else "not reached",
                speedup,
            ]
        )
    return rows


def plot(runs: Mapping[Key, Run], out: Path, *, title: str, target: float) -> None:
    """Draw test accuracy against accumulated wall time, one panel per bandwidth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(dict.fromkeys(link for link, _ in runs))
    fig, axes = plt.subplots(1, len(links), figsize=(6 * len(links), 4.5), squeeze=False)
    for ax, link in zip(axes[0], links, strict=True):
        for (where, label), run in runs.items():
            scored = [
                (elapsed, float(row["eval_accuracy"]))
                for row, elapsed in zip(run.rows, wall_times(run.rows), strict=True)
                if row.get("eval_accuracy") is not None
            ]
            if where == link and scored:
                ax.plot(*zip(*scored, strict=True), marker=".", label=label)
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:g}")
        ax.set_title(f"every client at {link}")
        ax.set_xlabel("wall time, s (sum of the rounds' durations)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.8, 0.95)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every bandwidth and encoding, print the table, draw the figure; 2 if refused."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, rounds=15, strategies=["fedavg"], timeout_s=900.0)
    parser.set_defaults(worker_processes=10)  # one link per client
    parser.add_argument("--bandwidth-mbit", type=float, nargs="+", default=[20.0, 5.0])
    parser.add_argument("--jitter-ms", type=float, default=20.0)
    parser.add_argument("--target", type=float, default=0.9, help="test accuracy to reach")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "bandwidth.png")
    planned = plan_or_exit(parser, planned_runs, "bench/bench_bandwidth.py", argv)
    if planned is None:
        return 2
    args, settings = planned
    results = run_all(settings, args)
    title = describe(args)
    plot(results, args.out, title=title, target=args.target)
    print(f"{title}; wall time in s; MB per round: the mean over all rounds")
    header = ["link", "encodings", "s per round", "MB up/round", "MB down/round", "final"]
    header += [f"s to {args.target:g}", "speedup"]
    print(markdown_table(header, summary_rows(results, target=args.target)))
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
