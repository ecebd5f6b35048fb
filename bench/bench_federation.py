"""Federation efficiency: a round's wall time against the pure training time in it.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python bench/bench_federation.py

For each model (the MLP on mnist5k, ResNet18 on synthetic 3x32x32 data) the script runs a
real federation on 127.0.0.1 as the local runner does (``python -m shared.runs``): one
aggregator process and 10 worker processes with one torch thread each, started with the
runner's own command lines and environment. Settings: fraction_fit 1.0, min_fit_clients =
min_available_clients = 10, no network simulation, server_eval off (evaluation is not
orchestration), update persistence on (the default).

Per round r (round 1 is the warm-up and is not counted):

- **wall** = finished_at(r) - finished_at(r - 1) from /history: from the moment round
  r - 1 was aggregated to the moment round r was, so it holds exactly one of everything a
  round costs (checkpoint, publish, long-poll wake-ups, downloads, training, uploads,
  ingest, aggregation); the server's turn (previous aggregate -> "round r opened" in the
  aggregator's log: checkpoint and publish) and the clients' turn (the rest) are shown;
- **pure** = max(sum over clients of t_k / cores, max t_k), where t_k is client k's local
  training measured alone in this process (one torch thread, same partition and config);
- **overhead** = 1 - pure / wall.

The workers' logged train_seconds ("round R: trained N examples in X s", two decimals;
the aggregator keeps only train_loss of an update's metrics) are printed for reference
only: they are wall times, stretched by the other nine processes sharing the cores.
Every process is stopped by its PID (its process group) in a ``finally``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import torch
from _common import machine_busy_seconds, machine_line, markdown_table

from client_worker.train import TrainConfig, seeded_global_rng, train
from shared.config import ExperimentConfig
from shared.data import dataset_from_config
from shared.models import build_model, load_numpy_state, state_to_numpy
from shared.partition import client_indices
from shared.runs.__main__ import aggregator_argv, child_env, worker_argv, write_config
from shared.runs.launch import LOOPBACK, Fleet, free_port, wait_healthy

__all__ = [
    "PureTraining",
    "RoundFigures",
    "RunResult",
    "Scenario",
    "main",
    "measure_pure_training",
    "run_scenario",
    "scenario_config",
]

NUM_CLIENTS = 10
_TRAINED = re.compile(r"client (\d+): round (\d+): trained \d+ examples in ([0-9.]+) s")
_OPENED = re.compile(r"round (\d+) opened")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass(frozen=True)
class Scenario:
    """One model to measure and the experiment keys that define it."""

    label: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class RoundFigures:
    """What one measured round cost, in seconds."""

    server_round: int
    wall: float
    duration: float  # /history duration_s: round opened -> aggregated
    logged_sum: float  # the workers' train_seconds, summed (wall time under contention)
    logged_max: float
    server_turn: float  # previous aggregate -> round opened (checkpoint, publish)
    clients_turn: float  # round opened -> aggregated (everything else)


@dataclass(frozen=True)
class PureTraining:
    """Each client's training time measured alone, one torch thread, nothing else running."""

    seconds: list[float]

    def pure(self, cores: int) -> float:
        """Return the pure training time of a round: max(sum / cores, slowest client)."""
        return max(sum(self.seconds) / cores, max(self.seconds))


def scenario_config(scenario: Scenario, *, rounds: int) -> ExperimentConfig:
    """Return the experiment config of one scenario."""
    keys: dict[str, Any] = {
        "name": f"bench-federation-{scenario.label}",
        "num_partitions": NUM_CLIENTS,
        "partition": {"name": "iid"},
        "num_rounds": rounds,
        "fraction_fit": 1.0,
        "min_fit_clients": NUM_CLIENTS,
        "min_available_clients": NUM_CLIENTS,
        "close_at_threshold": False,
        "round_timeout_s": 600,
        "server_eval": False,
        "batch_size": 32,
        "network": [],
    }
    return ExperimentConfig(**(keys | scenario.overrides))


def _stamp(line: str) -> float | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _worker_rounds(log_dir: Path) -> dict[int, list[tuple[float, float]]]:
    """Return, per round, (train_seconds, log time of the answered post) of each client."""
    found: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for path in sorted(log_dir.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = _TRAINED.search(line)
            stamp = _stamp(line)
            if match is not None and stamp is not None:
                found[int(match.group(2))].append((float(match.group(3)), stamp))
    return found


def _opened_at(log_path: Path) -> dict[int, float]:
    opened: dict[int, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = _OPENED.search(line)
        stamp = _stamp(line)
        if match is not None and stamp is not None:
            opened[int(match.group(1))] = stamp
    return opened


def _figures(history: list[dict[str, Any]], log_dir: Path) -> list[RoundFigures]:
    clients = _worker_rounds(log_dir)
    opened = _opened_at(log_dir / "aggregator.log")
    rows = {int(row["round"]): row for row in history}
    figures = []
    for server_round in sorted(rows)[1:]:
        row, previous = rows[server_round], rows[server_round - 1]
        posts = clients[server_round]
        if len(posts) != NUM_CLIENTS:
            raise RuntimeError(f"round {server_round}: {len(posts)} worker log lines, not 10")
        figures.append(
            RoundFigures(
                server_round=server_round,
                wall=row["finished_at"] - previous["finished_at"],
                duration=row["duration_s"],
                logged_sum=sum(seconds for seconds, _ in posts),
                logged_max=max(seconds for seconds, _ in posts),
                server_turn=opened[server_round] - previous["finished_at"],
                clients_turn=row["finished_at"] - opened[server_round],
            )
        )
    return figures


def _process_seconds(pids: list[int]) -> float:
    """Return the CPU seconds the processes `pids` used so far (0 for one already gone)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


@dataclass(frozen=True)
class RunResult:
    """A scenario's rounds and the machine's state while they ran."""

    rounds: list[RoundFigures]
    window_s: float
    own_cpu_s: float  # aggregator + workers during rounds 2..N
    others_cpu_s: float
    load_before: str
    load_after: str


def run_scenario(scenario: Scenario, *, rounds: int, work_dir: Path) -> RunResult:
    """Run one federation to its end and return its measured rounds."""
    config = scenario_config(scenario, rounds=rounds)
    run_dir = work_dir / scenario.label
    run_dir.mkdir(parents=True)
    config_path = write_config(run_dir, config)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log_dir = run_dir / "logs"
    load_before = _load()
    with Fleet() as fleet:
        aggregator = fleet.start(
            "aggregator",
            aggregator_argv(config_path, port=port, state_dir=run_dir / "state"),
            log_path=log_dir / "aggregator.log",
            env=child_env(worker=False),
        )
        wait_healthy(url, child=aggregator, timeout_s=180.0)
        for k in range(NUM_CLIENTS):
            argv = worker_argv(config_path, url=url, partition_id=k, num_partitions=NUM_CLIENTS)
            fleet.start(
                f"worker-{k}",
                argv,
                log_path=log_dir / f"worker-{k}.log",
                env=child_env(worker=True),
            )
        pids = [child.pid for child in fleet.children]
        history, window = _watch(url, fleet, rounds=rounds, pids=pids)
    load_after = _load()
    busy, own, elapsed = window
    return RunResult(
        rounds=_figures(history, log_dir),
        window_s=elapsed,
        own_cpu_s=own,
        others_cpu_s=max(busy - own, 0.0),
        load_before=load_before,
        load_after=load_after,
    )


def _watch(
    url: str, fleet: Fleet, *, rounds: int, pids: list[int], timeout_s: float = 900.0
) -> tuple[list[dict[str, Any]], tuple[float, float, float]]:
    """Poll /history until `rounds` rows exist; measure CPU from round 1's row to the last."""
    deadline = time.monotonic() + timeout_s
    start: tuple[float, float, float] | None = None
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while time.monotonic() < deadline:
            history: list[dict[str, Any]] = client.get("/history").json()
            if start is None and history:
                start = (machine_busy_seconds(), _process_seconds(pids), time.monotonic())
            if len(history) >= rounds and start is not None:
                end = (machine_busy_seconds(), _process_seconds(pids), time.monotonic())
                window = (end[0] - start[0], end[1] - start[1], end[2] - start[2])
                return history, window
            failed = fleet.failed()
            if failed is not None:
                raise RuntimeError(f"{failed.name} exited early:\n{failed.log_tail(15)}")
            time.sleep(0.05)
    raise TimeoutError(f"the federation did not finish {rounds} rounds in {timeout_s:.0f} s")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure_pure_training(config: ExperimentConfig, *, repeats: int = 2) -> PureTraining:
    """Train each client's partition alone in this process (one thread); keep the best time."""
    torch.set_num_threads(1)
    dataset = dataset_from_config(config)
    with seeded_global_rng(0):
        model = build_model(
            config.model,
            in_channels=dataset.in_channels,
            num_classes=dataset.num_classes,
            image_size=dataset.image_size,
        )
    initial = state_to_numpy(model)
    train_config = TrainConfig.from_round_config(config.round_config())
    seconds = []
    for partition_id in range(NUM_CLIENTS):
        indices = client_indices(
            dataset.train.labels,
            partition_id=partition_id,
            num_partitions=NUM_CLIENTS,
            config=config.partition,
            seed=config.seed,
        )
        split = dataset.train.subset(indices)
        images, labels = torch.from_numpy(split.images), torch.from_numpy(split.labels)
        best = float("inf")
        for repeat in range(repeats + (1 if partition_id == 0 else 0)):  # one warm-up
            load_numpy_state(model, initial)
            result = train(model, images, labels, train_config, seed=repeat)
            if partition_id > 0 or repeat > 0:
                best = min(best, result.train_seconds)
        seconds.append(best)
    return PureTraining(seconds)


# ---------------------------------------------------------------------------- reporting


def _median(values: list[float]) -> float:
    return statistics.median(values)


def summary_row(
    label: str, result: RunResult, pure: PureTraining, *, cores: int, target: float
) -> list[str]:
    """Return one table row: medians over the measured rounds."""
    rounds = result.rounds
    wall = _median([r.wall for r in rounds])
    ideal = pure.pure(cores)
    return [
        label,
        str(len(rounds)),
        f"{wall:.3f}",
        f"{sum(pure.seconds):.3f}",
        f"{max(pure.seconds):.3f}",
        f"{ideal:.3f}",
        f"{1.0 - ideal / wall:.1%}",
        f"<= {target:.0%}",
        f"{_median([r.server_turn for r in rounds]):.3f}",
        f"{_median([r.clients_turn for r in rounds]):.3f}",
        f"{_median([r.logged_max for r in rounds]):.2f}",
    ]


def rounds_table(result: RunResult, pure: PureTraining, *, cores: int) -> str:
    """Return every measured round of one scenario as a Markdown table."""
    header = [
        "round",
        "wall s",
        "duration_s",
        "overhead",
        "server turn s",
        "clients turn s",
        "logged train s: sum",
        "max",
    ]
    ideal = pure.pure(cores)
    rows = [
        [
            str(r.server_round),
            f"{r.wall:.3f}",
            f"{r.duration:.3f}",
            f"{1.0 - ideal / r.wall:.1%}",
            f"{r.server_turn:.3f}",
            f"{r.clients_turn:.3f}",
            f"{r.logged_sum:.2f}",
            f"{r.logged_max:.2f}",
        ]
        for r in result.rounds
    ]
    return markdown_table(header, rows)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (1 is warm-up)")
    parser.add_argument("--mlp-epochs", type=int, default=5, help="MLP local epochs")
    parser.add_argument("--resnet-train-size", type=int, default=300)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=["mlp", "resnet18"], help="run one model only")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print their tables."""
    args = build_parser().parse_args(argv)
    scenarios = [
        (
            Scenario(
                "mlp", {"dataset": "mnist5k", "model": "mlp", "local_epochs": args.mlp_epochs}
            ),
            0.20,
        ),
        (
            Scenario(
                "resnet18",
                {
                    "dataset": "synthetic",
                    "model": "resnet18",
                    "local_epochs": 1,
                    "synthetic": {"train_size": args.resnet_train_size, "test_size": 100},
                },
            ),
            0.05,
        ),
    ]
    print(machine_line())
    summary = []
    cores = args.cores
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        for scenario, target in scenarios:
            if args.only is not None and scenario.label != args.only:
                continue
            config = scenario_config(scenario, rounds=args.rounds)
            pure = measure_pure_training(config)
            result = run_scenario(scenario, rounds=args.rounds, work_dir=Path(tmp))
            print(
                f"\n{scenario.label}: rounds 2-{args.rounds}, {args.cores} cores; load "
                f"{result.load_before} -> {result.load_after}; CPU during them: ours "
                f"{result.own_cpu_s:.1f} s, other processes {result.others_cpu_s:.1f} s "
                f"in {result.window_s:.1f} s"
            )
            alone = " ".join(f"{t:.3f}" for t in pure.seconds)
            print(f"training alone, per client (s): {alone}")
            print(rounds_table(result, pure, cores=cores))
            summary.append(summary_row(scenario.label, result, pure, cores=cores, target=target))
    header = [
        "model",
        "rounds",
        "wall s",
        "sum alone s",
        "slowest alone s",
        "pure s",
        "overhead",
        "target",
        "server turn s",
        "clients turn s",
        "logged max train s",
    ]
    print("\nmedians over the measured rounds")
    print(markdown_table(header, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
