"""Helpers of the experiment scripts: strategy specs, federations run by the local runner.

A spec names a strategy and its parameters on the command line, ``[label=]name[:key=value,...]``
(``krum:num_malicious_clients=2``, ``multi-krum=krum:num_clients_to_keep=8``). Each key is a
parameter of the strategy when the config knows the strategy and it has that parameter,
else a top-level config key when there is one (``fedavg:mu=0.01`` is FedProx's client
under FedAvg, ``fedadam:lr=0.1`` changes the clients' learning rate), else a strategy
parameter again, which the config then refuses by name. Values are read as YAML
(``0.01``, ``2``, ``true``). Every run's config is checked before the first one starts,
so a name or key the aggregator does not know stops the script at once with the config
error. Each federation is ``python -m shared.runs`` in a child process, read back from
the metrics.json it leaves.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from _common import machine_line

from shared.config import ExperimentConfig, StrategyConfig, load_config
from shared.errors import ConfigError
from shared.runs.timeline import read_timeline_totals
from shared.timeline import ClientTotals

__all__ = [
    "REPO",
    "Key",
    "Run",
    "Spec",
    "accuracies",
    "add_run_arguments",
    "check_configs",
    "command_line",
    "describe",
    "override_flags",
    "parse_spec",
    "plan_or_exit",
    "rounds_to_reach",
    "run_all",
    "run_federation",
    "strategy_overrides",
]

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 25  # of the runner's output, shown when a run fails
# what a worker logs when the aggregator refuses its update for a NaN or an Inf (shared/wire.py)
NON_FINITE = "contains NaN or Inf"
_DOCUMENT_END = "...\n"  # what PyYAML writes after a lone scalar
Key = tuple[str, str]  # a run's row and column in the table


@dataclass(frozen=True)
class Spec:
    """A name with parameters, as given on the command line; `label` names it in tables."""

    label: str
    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One federation's /history rows, and why it stopped early (None: it finished)."""

    rows: list[dict[str, Any]]
    error: str | None = None
    diverged: bool = False  # it stopped because a client's weights were no longer finite
    timeline: tuple[ClientTotals, ...] = ()  # each client's phases (the run's timeline.csv)

    def outcome(self) -> str:
        """Return how the run ended, for a table cell ("" when it finished)."""
        if self.error is None:
            return ""
        how = "diverged" if self.diverged else "failed"
        return f" ({how} after round {len(self.rows)})"


def parse_spec(text: str) -> Spec:
    """Parse ``[label=]name[:key=value,...]``; the label defaults to the text itself."""
    head, _, tail = text.strip().partition(":")
    label, _, name = head.rpartition("=")
    name = name.strip()
    if not name:
        raise ConfigError(f"spec {text!r} names nothing: expected name[:key=value,...]")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in tail.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"spec {text!r}: {item!r} is not of the form key=value")
        params[key.strip()] = yaml.safe_load(raw)
    return Spec(label.strip() or text.strip(), name, params)


def _strategy_parameters() -> dict[str, set[str]]:
    """Return each strategy the config knows, with the names of its parameters."""
    union = get_args(StrategyConfig)[0]
    known: dict[str, set[str]] = {}
    for section in get_args(union):
        (name,) = get_args(section.model_fields["name"].annotation)
        known[name] = set(section.model_fields) - {"name"}
    return known


def strategy_overrides(spec: Spec) -> dict[str, Any]:
    """Return the config overrides of a strategy spec: `strategy`, and top-level keys."""
    own = _strategy_parameters().get(spec.name)
    top_level = set(ExperimentConfig.model_fields) - {"strategy"}
    strategy: dict[str, Any] = {"name": spec.name}
    config: dict[str, Any] = {}
    for key, value in spec.params.items():
        if own is not None and key not in own and key in top_level:
            config[key] = value
        else:
            strategy[key] = value
    return {"strategy": strategy, **config}


def check_configs(config_path: Path, settings: Mapping[Key, Mapping[str, Any]]) -> list[str]:
    """Return each config error the runs' overrides meet, with the runs that meet it."""
    errors: dict[str, list[str]] = {}
    for (row, column), overrides in settings.items():
        try:
            load_config(config_path, overrides)
        except ConfigError as exc:
            errors.setdefault(str(exc), []).append(f"{row} / {column}")
    return [f"{message}\n  (runs: {', '.join(runs)})" for message, runs in errors.items()]


Plan = dict[Key, dict[str, Any]]  # each run's config overrides


def plan_or_exit(
    parser: argparse.ArgumentParser,
    planned_runs: Callable[[argparse.Namespace], Plan],
    script: str,
    argv: Sequence[str] | None,
) -> tuple[argparse.Namespace, Plan] | None:
    """Parse the flags, plan the runs and check every config; None if one is refused.

    A malformed spec is a usage error (exit 2 by argparse). On success the command line
    and the machine are printed, before the first run starts.
    """
    args = parser.parse_args(argv)
    try:
        settings = planned_runs(args)
    except ConfigError as exc:
        parser.error(str(exc))
    errors = check_configs(args.config, settings)
    if errors:
        print("refused configs, nothing was run:\n" + "\n".join(errors), file=sys.stderr)
        return None
    print(f"command: {command_line(script, sys.argv[1:] if argv is None else argv)}")
    print(f"machine: {machine_line()}", flush=True)
    return args, settings


def add_run_arguments(
    parser: argparse.ArgumentParser, *, rounds: int, strategies: Sequence[str], timeout_s: float
) -> None:
    """Add the flags both experiment scripts take: config, size, strategies, how to run."""
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument(
        "--strategy",
        action="append",
        metavar="SPEC",
        help="[label=]name[:key=value,...], repeatable (default: " + ", ".join(strategies) + ")",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes per run (default: one per core; the results do not change)",
    )
    parser.add_argument("--timeout", type=float, default=timeout_s, help="seconds per run")
    parser.add_argument("--runs-dir", type=Path, help="keep the run folders here")


def run_all(settings: Mapping[Key, Mapping[str, Any]], args: argparse.Namespace) -> dict[Key, Run]:
    """Run each federation in turn, telling on stderr how each one ended."""
    results: dict[Key, Run] = {}
    with tempfile.TemporaryDirectory(prefix="bench-experiment-") as work:
        root = args.runs_dir or Path(work)
        for index, (key, overrides) in enumerate(settings.items()):
            started = time.monotonic()
            run = run_federation(
                args.config,
                overrides,
                runs_dir=root / f"{index:02d}",
                worker_processes=min(args.worker_processes, args.clients),
                timeout_s=args.timeout,
            )
            results[key] = run
            scores = accuracies(run.rows)
            final = f"{scores[-1]:.4f}" if scores else "n/a"
            took = time.monotonic() - started
            print(f"{key[0]} / {key[1]}: final accuracy {final} ({took:.0f} s)", file=sys.stderr)
            if run.error:
                print(f"{key[0]} / {key[1]}: {run.error}", file=sys.stderr)
            sys.stderr.flush()
    return results


def run_federation(
    config_path: Path,
    overrides: Mapping[str, Any],
    *,
    runs_dir: Path,
    worker_processes: int,
    timeout_s: float,
) -> Run:
    """Run one federation with the local runner; return its rows (and error, if it failed)."""
    argv = [sys.executable, "-m", "shared.runs", "--config", str(config_path), "--no-live"]
    argv += ["--runs-dir", str(runs_dir), "--worker-processes", str(worker_processes)]
    argv += override_flags(overrides)
    try:
        done = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return Run(_rows(runs_dir), f"no result after {timeout_s:.0f} s; stopped")
    if done.returncode == 0:
        return Run(_rows(runs_dir), timeline=_timeline(runs_dir))
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-TAIL_LINES:])
    error = f"the runner exited with code {done.returncode}:\n{tail}"
    return Run(_rows(runs_dir), error, diverged=_refused_non_finite(runs_dir))


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
    """Return the runner's ``--set key=value`` flags, each value in YAML as `--set` reads it."""
    flags = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20)
        text = text.removesuffix(_DOCUMENT_END).strip()
        flags += ["--set", f"{key}={text}"]
    return flags


def _refused_non_finite(runs_dir: Path) -> bool:
    """Tell whether a worker ended because the aggregator refused its non-finite weights."""
    logs = runs_dir.glob("*/logs/worker*.log")
    return any(NON_FINITE in log.read_text(errors="replace") for log in logs)


def _timeline(runs_dir: Path) -> tuple[ClientTotals, ...]:
    """Return the clients' phase totals of the run folder under `runs_dir` (none: empty)."""
    found = sorted(runs_dir.glob("*/timeline.csv"))
    return tuple(read_timeline_totals(found[-1].parent)) if found else ()


def _rows(runs_dir: Path) -> list[dict[str, Any]]:
    """Return the rounds of the run folder under `runs_dir` (none when it left no metrics)."""
    found = sorted(runs_dir.glob("*/metrics.json"))
    if not found:
        return []
    rows: list[dict[str, Any]] = json.loads(found[-1].read_text())["rounds"]
    return rows


def accuracies(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Return the server's test accuracy of each round that was evaluated, in order."""
    return [float(row["eval_accuracy"]) for row in rows if row.get("eval_accuracy") is not None]


def rounds_to_reach(rows: Sequence[Mapping[str, Any]], fraction: float) -> int | None:
    """Return the first round whose accuracy is at least `fraction` of the run's best."""
    scored = [row for row in rows if row.get("eval_accuracy") is not None]
    if not scored:
        return None
    target = fraction * max(float(row["eval_accuracy"]) for row in scored)
    return next(int(row["round"]) for row in scored if float(row["eval_accuracy"]) >= target)


def describe(args: argparse.Namespace) -> str:
    """Return what every run shares: model, dataset, config file, clients, rounds."""
    config = load_config(args.config)
    return (
        f"{config.model} on {config.dataset} ({args.config.name}), {args.clients} clients, "
        f"{args.rounds} rounds"
    )


def command_line(script: str, argv: Sequence[str]) -> str:
    """Return how the script was invoked, quoted for a shell."""
    return shlex.join(["python", script, *argv])
