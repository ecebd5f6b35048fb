"""Federation efficiency: a round's wall time against the pure training time in it.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python bench/bench_federation.py

For each model (the MLP on mnist5k, ResNet18 on synthetic 3x32x32 data) the script runs a
real federation of 10 clients on 127.0.0.1 (federation_run.py) in two layouts: one worker
process per client (``processes``, as ``make demo``), and one worker process per core
running its clients as virtual clients with one training at a time (``virtual``).
Settings: fraction_fit 1.0, min_fit_clients = min_available_clients = 10, iid, no network
simulation, server_eval off (evaluation is not orchestration), update persistence on.

Per round r (round 1 is the warm-up and is not counted):

- **wall** = finished_at(r) - finished_at(r - 1) from /history: one of everything a round
  costs (checkpoint, publish, long-poll wake-ups, downloads, training, uploads, ingest,
  aggregation);
- **pure** = max(sum over clients of t_k / cores, max t_k), with t_k taken two ways:
  *in the run*: client k's training CPU seconds as it reported them in /history (its
  thread's CPU time over the training loop, so waiting for a core is not counted); and
  *alone*: client k's training measured in this process with nothing else running;
- **overhead** = 1 - pure / wall;
- **overhead (wall)** = 1 - pure (wall) / wall, with pure (wall) = max(sum over clients of
  their reported ``train_seconds`` / the trainings that run at once, slowest client): in
  ``processes`` every training runs at once, so it is the slowest client's, in
  ``virtual`` the sum over the two cores. Unlike the CPU-based figures it counts the CPU
  that other processes took from a training while it ran as training time.

ResNet18 runs with 500 examples per client by default (16 SGD steps a round);
``--resnet-train-size 300`` gives one step a round, where moving the model dominates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import machine_line, markdown_table
from federation_run import Layout, RunResult, pure_time, run_federation

from client_worker.train import TrainConfig, seeded_global_rng, train
from shared.config import ExperimentConfig
from shared.data import dataset_from_config
from shared.models import build_model, load_numpy_state, state_to_numpy
from shared.partition import client_indices

__all__ = ["Scenario", "main", "measure_alone", "scenario_config"]

NUM_CLIENTS = 10


@dataclass(frozen=True)
class Scenario:
    """One model to measure and the experiment keys that define it."""

    label: str
    overrides: dict[str, Any]


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


def measure_alone(config: ExperimentConfig, *, repeats: int = 2) -> list[float]:
    """Train each client's partition alone in this process (one thread); best time of each."""
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
    return seconds


def rounds_table(result: RunResult, alone: list[float], *, cores: int) -> str:
    """Return every measured round of one run as a Markdown table."""
    header = ["round", "wall s", "server turn s", "train CPU s: sum", "max"]
    header += ["pure (run) s", "overhead (run)", "overhead (alone)"]
    header += ["pure (wall) s", "overhead (wall)"]
    ideal = pure_time(alone, cores)
    rows = [
        [
            str(r.server_round),
            f"{r.wall:.3f}",
            f"{r.server_turn:.3f}",
            f"{sum(r.train_cpu_seconds):.3f}",
            f"{max(r.train_cpu_seconds):.3f}",
            f"{r.pure(cores):.3f}",
            f"{1.0 - r.pure(cores) / r.wall:.1%}",
            f"{1.0 - ideal / r.wall:.1%}",
            f"{r.pure_wall(result.layout):.3f}",
            f"{1.0 - r.pure_wall(result.layout) / r.wall:.1%}",
        ]
        for r in result.rounds
    ]
    return markdown_table(header, rows)


def summary_row(
    scenario: Scenario, result: RunResult, alone: list[float], *, cores: int
) -> list[str]:
    """Return one table row: medians over the measured rounds."""
    rounds = result.rounds
    wall = statistics.median(r.wall for r in rounds)
    in_run = statistics.median(r.pure(cores) for r in rounds)
    overhead_run = statistics.median(1.0 - r.pure(cores) / r.wall for r in rounds)
    ideal = pure_time(alone, cores)
    overhead_wall = statistics.median(1.0 - r.pure_wall(result.layout) / r.wall for r in rounds)
    return [
        scenario.label,
        result.layout.name,
        str(len(rounds)),
        f"{wall:.3f}",
        f"{in_run:.3f}",
        f"{overhead_run:.1%}",
        f"{ideal:.3f}",
        f"{1.0 - ideal / wall:.1%}",
        f"{overhead_wall:.1%}",
        f"{statistics.median(r.server_turn for r in rounds):.3f}",
        f"{result.own_cpu_s / len(rounds):.2f}",
        f"{result.aggregator_cpu_s / len(rounds):.2f}",
        f"{_workers_untrained_cpu(result) / len(rounds):.2f}",
    ]


def _workers_untrained_cpu(result: RunResult) -> float:
    """Return the workers' CPU seconds outside their training loops over the measured rounds."""
    training = sum(sum(r.train_cpu_seconds) for r in result.rounds)
    return result.own_cpu_s - result.aggregator_cpu_s - training


SUMMARY_HEADER = [
    "model",
    "layout",
    "rounds",
    "wall s",
    "pure (run) s",
    "overhead (run)",
    "pure (alone) s",
    "overhead (alone)",
    "overhead (wall)",
    "server turn s",
    "our CPU s / round",
    "aggregator CPU s / round",
    "workers' CPU beyond training s / round",
]


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--mlp-rounds", type=int, default=21, help="MLP rounds per run (1 is warm-up)"
    )
    parser.add_argument(
        "--resnet-rounds", type=int, default=3, help="ResNet18 rounds per run (1 is warm-up)"
    )
    parser.add_argument("--mlp-epochs", type=int, default=5, help="MLP local epochs")
    parser.add_argument(
        "--resnet-train-size",
        type=int,
        default=5000,
        help="synthetic training examples over all clients: 5000 = 500 per client, 16 SGD "
        "steps a round; 300 = one step a round, the communication-bound extreme",
    )
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=["mlp", "resnet18"], help="run one model only")
    parser.add_argument(
        "--layouts", default="processes,virtual", help="comma-separated: processes, virtual"
    )
    return parser


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    """Return the scenarios the flags select."""
    mlp = Scenario("mlp", {"dataset": "mnist5k", "model": "mlp", "local_epochs": args.mlp_epochs})
    resnet = Scenario(
        "resnet18",
        {
            "dataset": "synthetic",
            "model": "resnet18",
            "local_epochs": 1,
            "synthetic": {"train_size": args.resnet_train_size, "test_size": 100},
        },
    )
    return [s for s in (mlp, resnet) if args.only in (None, s.label)]


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios in every layout and print their tables."""
    args = build_parser().parse_args(argv)
    cores = args.cores
    layouts = {
        "processes": Layout.processes(NUM_CLIENTS),
        "virtual": Layout.virtual(NUM_CLIENTS, cores),
    }
    chosen = [layouts[name.strip()] for name in args.layouts.split(",")]
    print(machine_line())
    summary = []
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        for scenario in scenarios(args):
            rounds = args.mlp_rounds if scenario.label == "mlp" else args.resnet_rounds
            config = scenario_config(scenario, rounds=rounds)
            alone = measure_alone(config)
            print(
                f"\n{scenario.label}: training alone, per client (s): "
                + " ".join(f"{t:.3f}" for t in alone)
            )
            for layout in chosen:
                result = run_federation(config, layout, work_dir=Path(tmp))
                print(
                    f"\n{scenario.label}, {layout.name}: rounds 2-{rounds}, {cores} cores; "
                    f"load {result.load_before} -> {result.load_after}; CPU during them: ours "
                    f"{result.own_cpu_s:.1f} s (aggregator {result.aggregator_cpu_s:.1f} s), "
                    f"other processes {result.others_cpu_s:.1f} s "
                    f"in {result.window_s:.1f} s"
                )
                print(rounds_table(result, alone, cores=cores))
                summary.append(summary_row(scenario, result, alone, cores=cores))
    print("\nmedians over the measured rounds")
    print(markdown_table(SUMMARY_HEADER, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
