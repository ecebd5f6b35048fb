"""`python -m shared.runs`: one aggregator and N workers on 127.0.0.1, a live view, a run folder.

    python -m shared.runs --config configs/demo.yaml [--clients 10] [--rounds 20] [--no-live]
    python -m shared.runs --clients 10 --worker-processes 2   # 2 processes of 5 clients each

Every part is its own OS process, logging to <run>/logs/: by default one worker process per
client; with --worker-processes N, N processes run contiguous ranges of clients as virtual
clients, one training per core overall (see shared/runs/layout.py). The runner only starts
them and polls the aggregator's /status and /history. It stops every process when the run
finished, when one of them dies, or on Ctrl-C / SIGTERM, and leaves config.yaml,
metrics.csv, metrics.json, curves.png, tensorboard/, and the clients' phases in timeline/,
timeline.png and timeline.csv in runs/<timestamp>-<model>-<dataset>/.
Exit codes: 0 the run finished, 1 a process died or never became healthy, 2 a bad config,
128 + the signal number when interrupted. The flags and the config they resolve to are
cli.py's, the run folder report.py's and timeline.py's, starting and watching the
processes supervise.py's.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.config import ExperimentConfig
from shared.errors import TributaryError
from shared.runs.cli import PROG, build_parser, resolve_config
from shared.runs.launch import LOOPBACK, Fleet, LaunchError, StopSignals, free_port
from shared.runs.layout import (
    aggregator_argv,
    child_env,
    default_worker_processes,
    describe_layout,
    worker_argv,
    worker_processes,
)
from shared.runs.progress import LinePrinter, LiveView, dp_sgd_lines, traffic_lines
from shared.runs.report import create_run_dir, write_config, write_report
from shared.runs.timeline import write_timeline
from shared.runs.supervise import (
    Outcome,
    View,
    describe_exit,
    interrupted,
    launch,
    supervise,
    wind_down,
)

__all__ = [
    "Outcome",
    "aggregator_argv",
    "build_parser",
    "child_env",
    "create_run_dir",
    "describe_exit",
    "describe_layout",
    "interrupted",
    "main",
    "resolve_config",
    "supervise",
    "worker_argv",
    "write_config",
]


def _run(config: ExperimentConfig, run_dir: Path, args: argparse.Namespace) -> int:
    console = Console()
    title = f"{config.name}: {config.model} on {config.dataset}, {config.num_partitions} clients"
    config_path = write_config(run_dir, config)
    port = args.port or free_port()
    layout = worker_processes(
        config_path,
        url=f"http://{LOOPBACK}:{port}",
        num_clients=config.num_partitions,
        num_processes=args.worker_processes or default_worker_processes(config.num_partitions),
        train_slots=args.train_slots,
        timeline_dir=run_dir / "timeline",
    )
    console.print(f"run folder: {run_dir}", markup=False, highlight=False)
    console.print(f"aggregator: http://{LOOPBACK}:{port}", markup=False, highlight=False)
    console.print(f"dashboard: http://{LOOPBACK}:{port}/ui", markup=False, highlight=False)
    console.print(describe_layout(layout), markup=False, highlight=False)
    live = console.is_terminal and not args.no_live
    view: View = LiveView(console, title=title) if live else LinePrinter(console)
    view.update(None, [], elapsed_s=0.0)
    history: list[dict[str, Any]] = []
    stop = StopSignals()
    try:
        with stop.installed(), Fleet() as fleet:
            try:
                aggregator, workers, url = launch(
                    fleet, config_path, run_dir, layout, port=port, stop=stop
                )
                outcome, history = supervise(
                    fleet, aggregator, workers, url=url, view=view, stop=stop
                )
                if outcome.code == 0:
                    wind_down(fleet, workers, view)
            except LaunchError as exc:
                outcome = interrupted(stop) if stop.event.is_set() else Outcome(1, str(exc))
    finally:
        view.close()
    return _finish(console, outcome, run_dir, history, title=title)


def _finish(
    console: Console,
    outcome: Outcome,
    run_dir: Path,
    history: list[dict[str, Any]],
    *,
    title: str,
) -> int:
    """Write the run folder's report and print how the run ended."""
    status = "finished" if outcome.code == 0 else "stopped"
    write_report(run_dir, history, title=title, status=status, message=outcome.message)
    write_timeline(run_dir, history, title=title)
    lines = [outcome.message, *traffic_lines(history), *dp_sgd_lines(history)]
    final = next((r for r in reversed(history) if r.get("eval_accuracy") is not None), None)
    accuracy = f"{final['eval_accuracy']:.4f} after round {final['round']}" if final else "n/a"
    private = next((r for r in reversed(history) if r.get("epsilon") is not None), None)
    if private is not None:  # DP-FedAvg: the privacy spent, as of the last round
        lines.append(
            f"privacy: epsilon {private['epsilon']:.4g} at delta {private['delta']:g} "
            f"after round {private['round']}"
        )
    lines.append(f"run folder: {run_dir} (final accuracy {accuracy})")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return outcome.code


def main(argv: list[str] | None = None) -> int:
    """Run one local federation and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train_slots is not None and args.worker_processes is None:
        parser.error("--train-slots needs --worker-processes (one process per client has one)")
    try:
        config = resolve_config(args)
        run_dir = create_run_dir(args.runs_dir, config)
    except TributaryError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(config, run_dir, args)
    except KeyboardInterrupt:  # a second Ctrl-C: the processes are stopped, no report
        print(f"{PROG}: interrupted twice; stopped without writing the report", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
