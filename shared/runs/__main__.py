"""`python -m shared.runs`: one aggregator and N workers on 127.0.0.1, a live view, a run folder.

    python -m shared.runs --config configs/demo.yaml [--clients 10] [--rounds 20] [--no-live]
    python -m shared.runs --clients 10 --worker-processes 2   # 2 processes of 5 clients each

Every part is its own OS process, logging to <run>/logs/: by default one worker process per
client; with --worker-processes N, N processes run contiguous ranges of clients as virtual
clients, one training per core overall (see shared/runs/layout.py). The runner only starts
them and polls the aggregator's /status and /history. It stops every process when the run
finished, when one of them dies, or on Ctrl-C / SIGTERM, and leaves config.yaml,
metrics.csv, metrics.json, curves.png and tensorboard/ in runs/<timestamp>-<model>-<dataset>/.
Exit codes: 0 the run finished, 1 a process died or never became healthy, 2 a bad config,
128 + the signal number when interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import httpx
import yaml
from rich.console import Console

from shared.config import (
    DatasetName,
    ExperimentConfig,
    PartitionName,
    config_source,
    load_config,
    parse_overrides,
)
from shared.errors import TributaryError
from shared.runs.launch import (
    LOOPBACK,
    Child,
    Fleet,
    LaunchError,
    StopSignals,
    fetch_json,
    free_port,
    wait_healthy,
)
from shared.runs.layout import (
    WorkerProcess,
    aggregator_argv,
    child_env,
    worker_argv,
    worker_processes,
)
from shared.runs.progress import LinePrinter, LiveView, traffic_lines
from shared.runs.report import write_report

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

PROG = "python -m shared.runs"
POLL_S = 0.5  # display refresh; workers use the aggregator's long poll, not this
HEALTH_TIMEOUT_S = 120.0  # importing torch in 11 processes on 2 cores takes a while
WORKER_EXIT_TIMEOUT_S = 30.0  # after "finished": workers see it on their next poll and exit
View = LiveView | LinePrinter


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the exit code and one message for the user."""

    code: int
    message: str


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
        "per client)",
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


def create_run_dir(runs_dir: Path, config: ExperimentConfig, *, now: float | None = None) -> Path:
    """Create runs_dir/<timestamp>-<model>-<dataset>/ (with a -2, -3 ... suffix if taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = f"{stamp}-{config.model}-{config.dataset}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        run_dir = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        (run_dir / "logs").mkdir()
        return run_dir
    raise TributaryError(f"cannot create a run folder {base} under {runs_dir}: all names taken")


def write_config(run_dir: Path, config: ExperimentConfig) -> Path:
    """Write the resolved config as run_dir/config.yaml (what every process loads)."""
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _launch(
    fleet: Fleet,
    config_path: Path,
    run_dir: Path,
    layout: list[WorkerProcess],
    *,
    port: int,
    stop: StopSignals,
) -> tuple[Child, list[Child], str]:
    """Start the aggregator, wait until it is healthy, then start the worker processes."""
    url = f"http://{LOOPBACK}:{port}"
    aggregator = fleet.start(
        "aggregator",
        aggregator_argv(config_path, port=port, state_dir=run_dir / "state"),
        log_path=run_dir / "logs" / "aggregator.log",
        env=child_env(worker=False),
    )
    wait_healthy(url, child=aggregator, timeout_s=HEALTH_TIMEOUT_S, stop=stop.event)
    workers = [
        fleet.start(
            worker.name,
            worker.argv,
            log_path=run_dir / "logs" / f"{worker.name}.log",
            # client algorithms' state (personalized layers, ...) stays in the run folder
            env={
                **child_env(worker=True),
                "TRIBUTARY_WORKER_STATE_DIR": str(run_dir / "worker-state"),
            },
        )
        for worker in layout
    ]
    return aggregator, workers, url


def describe_layout(layout: list[WorkerProcess]) -> str:
    """Return one line saying how the clients are spread over worker processes."""
    if all(worker.train_slots is None for worker in layout):
        return f"workers: {len(layout)} processes, one per client"
    slots = layout[0].train_slots
    ranges = ", ".join(f"{w.first}-{w.last}" for w in layout)
    return (
        f"workers: {len(layout)} processes of virtual clients ({ranges}), "
        f"at most {slots} training at once in each"
    )


def describe_exit(child: Child) -> str:
    """Return which child exited, how, and the tail of its log."""
    code = child.poll()
    how = f"code {code}"
    if code is not None and code < 0:
        how = f"signal {signal.Signals(-code).name}"
    tail = child.log_tail(15) or "(empty)"
    return f"{child.name} (pid {child.pid}) exited with {how}; end of {child.log_path}:\n{tail}"


def _history_changed(status: Any, history: list[dict[str, Any]]) -> bool:
    """Tell whether /status names a last round that `history` does not end with."""
    if not isinstance(status, dict):
        return False
    last_round = (status.get("last_round") or {}).get("round")
    return last_round != (history[-1]["round"] if history else None)


def _finished(status: Any, history: list[dict[str, Any]]) -> bool:
    return (
        isinstance(status, dict)
        and status.get("phase") == "finished"
        and len(history) >= status["num_rounds"]
    )


def supervise(
    fleet: Fleet,
    aggregator: Child,
    workers: list[Child],
    *,
    url: str,
    view: View,
    stop: StopSignals,
) -> tuple[Outcome, list[dict[str, Any]]]:
    """Poll and display until the run finished, a process died, or a stop was asked."""
    started = time.monotonic()
    history: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=httpx.Timeout(5.0, connect=2.0)) as client:
        while True:
            # Exits are checked before the status is read: a worker only exits 0 after the
            # aggregator said "finished", so a status read afterwards already says so too.
            dead = fleet.failed(must_run=lambda child: child is aggregator)
            workers_gone = all(worker.poll() is not None for worker in workers)
            status = fetch_json(client, "/status")
            if _history_changed(status, history):
                rows = fetch_json(client, "/history")
                history = rows if isinstance(rows, list) else history
            view.update(status, history, elapsed_s=time.monotonic() - started)
            if _finished(status, history):
                return Outcome(0, "the run finished"), history
            if dead is not None:
                return Outcome(1, describe_exit(dead)), history
            if workers_gone:
                return Outcome(1, "every worker exited before the run finished"), history
            if stop.event.wait(POLL_S):
                return interrupted(stop), history


def interrupted(stop: StopSignals) -> Outcome:
    """Return the outcome of a run stopped by SIGINT or SIGTERM: exit code 128 + signal."""
    signum = signal.Signals(stop.signum or signal.SIGINT)
    return Outcome(128 + signum.value, f"interrupted by {signum.name}")


def _wind_down(fleet: Fleet, workers: list[Child], view: View) -> None:
    """After "finished": let the workers exit on their own (bounded), then stop everything."""
    if not fleet.wait(workers, timeout_s=WORKER_EXIT_TIMEOUT_S):
        left = ", ".join(w.name for w in workers if w.poll() is None)
        view.note(f"still running {WORKER_EXIT_TIMEOUT_S:.0f} s after the end, stopped: {left}")
    for worker in workers:
        if worker.poll():
            view.note(f"warning: {describe_exit(worker)}")
    fleet.stop()


def _run(config: ExperimentConfig, run_dir: Path, args: argparse.Namespace) -> int:
    console = Console()
    title = f"{config.name}: {config.model} on {config.dataset}, {config.num_partitions} clients"
    config_path = write_config(run_dir, config)
    port = args.port or free_port()
    layout = worker_processes(
        config_path,
        url=f"http://{LOOPBACK}:{port}",
        num_clients=config.num_partitions,
        num_processes=args.worker_processes,
        train_slots=args.train_slots,
    )
    console.print(f"run folder: {run_dir}", markup=False, highlight=False)
    console.print(f"aggregator: http://{LOOPBACK}:{port}", markup=False, highlight=False)
    console.print(describe_layout(layout), markup=False, highlight=False)
    live = console.is_terminal and not args.no_live
    view: View = LiveView(console, title=title) if live else LinePrinter(console)
    view.update(None, [], elapsed_s=0.0)
    history: list[dict[str, Any]] = []
    stop = StopSignals()
    try:
        with stop.installed(), Fleet() as fleet:
            try:
                aggregator, workers, url = _launch(
                    fleet, config_path, run_dir, layout, port=port, stop=stop
                )
                outcome, history = supervise(
                    fleet, aggregator, workers, url=url, view=view, stop=stop
                )
                if outcome.code == 0:
                    _wind_down(fleet, workers, view)
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
    lines = [outcome.message, *traffic_lines(history)]
    final = next((r for r in reversed(history) if r.get("eval_accuracy") is not None), None)
    accuracy = f"{final['eval_accuracy']:.4f} after round {final['round']}" if final else "n/a"
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
