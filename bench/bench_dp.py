"""Client-level DP-FedAvg on mnist5k: the server's test accuracy against epsilon at delta 1e-5.

    .venv/bin/python bench/bench_dp.py [--populations 100 1000] [--fraction-fit 0.1]
        [--noise 1 2 4] [--rounds 50] [--clip-norm 0.5] [--out docs/img/dp-client-level.png]

For each population N (an IID split of mnist5k's 4000 training digits: 40 digits per
client for N = 100, 4 for N = 1000), rounds sample m = fraction_fit * N clients without
replacement, as the aggregator's selection does. Each population runs FedAvg without DP
(the reference), DP-FedAvg with clipping alone (noise_multiplier 0: what clipping costs),
then DP-FedAvg at each noise multiplier z of `--noise`. Prints a markdown table of epsilon
after the last round, the final and the best test accuracy, and the median L2 norm of the
clients' deltas (what the clip norm C cuts), and draws accuracy against epsilon into `--out`.

The federation is simulated in this process with the project's own parts: the clients'
data are `load_local_data` of each partition, each client trains with the worker's
`train` (its seed derived as the worker derives it), the round's clients are drawn by the
aggregator's `select_clients`, the update is the configured strategy's `aggregate` (a
fixed `noise_seed`, so reruns give the same figures), and epsilon is the aggregator's
accountant (`shared.privacy.accounting`) over rounds sampled m of N. What this leaves out
(HTTP, processes, the wire) changes no figure here, only the time a run takes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine_line, markdown_table
from _experiments import REPO, command_line

from aggregator_service.federation.selection import select_clients
from aggregator_service.strategy import ClientUpdate, build_strategy
from client_worker.local_data import LocalData, load_local_data
from client_worker.train import TrainConfig, derive_seed, train
from shared.config import ExperimentConfig, load_config
from shared.data import Dataset, dataset_from_config
from shared.errors import ConfigError
from shared.evaluation import evaluate
from shared.fit_clients import num_fit_clients
from shared.models import build_model, init_global_weights, load_numpy_state, state_to_numpy
from shared.privacy.accounting import RoundSampling, planned_epsilon
from shared.privacy.clipping import l2_norm

__all__ = [
    "Population",
    "Result",
    "Setting",
    "main",
    "planned_settings",
    "plot",
    "prepare",
    "simulate",
    "summary_rows",
]

Weights = dict[str, np.ndarray]

# what every run shares: the 2NN on IID mnist5k, one local epoch of batches of 10
BASE: dict[str, Any] = {
    "name": "bench-dp",
    "seed": 0,
    "dataset": "mnist5k",
    "model": "mlp",
    "partition": {"name": "iid"},
    "local_epochs": 1,
    "batch_size": 10,
    "lr": 0.1,
    "momentum": 0.0,
    "server_eval": True,
    "data_dir": str(REPO / "data"),  # wherever the script is started from
}
NOISE = [1.0, 2.0, 4.0]
NO_DP = "no DP (FedAvg)"
CLIP_ONLY = "clipping only (z = 0)"


@dataclass(frozen=True)
class Setting:
    """One run: its population, its label in the table, its config overrides."""

    population: int
    label: str
    overrides: Mapping[str, Any]
    noise_multiplier: float | None  # None: no DP


@dataclass
class Result:
    """What one run measured."""

    setting: Setting
    clients_per_round: int
    epsilon: float | None  # after the last round (None: no DP; inf: no noise)
    accuracy: list[tuple[int, float]] = field(default_factory=list)  # (round, test accuracy)
    delta_norms: list[float] = field(default_factory=list)  # ||y_i - x|| of every update
    seconds: float = 0.0

    @property
    def final(self) -> float:
        """The test accuracy after the last round."""
        return self.accuracy[-1][1]

    @property
    def best(self) -> float:
        """The best test accuracy of the rounds evaluated."""
        return max(a for _, a in self.accuracy)


def planned_settings(args: argparse.Namespace) -> list[Setting]:
    """Return every run: per population, no DP, clipping alone, and each noise multiplier."""
    settings = []
    for population in args.populations:
        counts = {
            "num_partitions": population,
            "fraction_fit": args.fraction_fit,
            "min_fit_clients": 1,
            "min_available_clients": population,
            "num_rounds": args.rounds,
        }
        dp = {
            "name": "dpfedavg",
            "clip_norm": args.clip_norm,
            "server_lr": args.server_lr,
            "delta": args.delta,
            "noise_seed": args.noise_seed,
        }
        settings.append(Setting(population, NO_DP, counts | {"strategy": "fedavg"}, None))
        for z in [0.0, *args.noise]:
            label = CLIP_ONLY if z == 0 else f"z = {z:g}"
            overrides = counts | {"strategy": dp | {"noise_multiplier": z}}
            settings.append(Setting(population, label, overrides, z))
    return settings


def _updates(
    config: ExperimentConfig,
    model: torch.nn.Module,
    current: Weights,
    clients: Sequence[LocalData],
    selected: Sequence[str],
    server_round: int,
    norms: list[float],
) -> Iterator[ClientUpdate]:
    """Train each selected client from `current`, one at a time, as the strategy reads them."""
    train_config = TrainConfig.from_round_config(config.round_config())
    for client_id in selected:
        partition_id = int(client_id)
        data = clients[partition_id]
        load_numpy_state(model, current)
        seed = derive_seed(config.seed, partition_id, server_round)  # as the worker does
        result = train(model, data.images, data.labels, train_config, seed=seed)
        weights = {name: array.copy() for name, array in state_to_numpy(model).items()}
        norms.append(l2_norm({n: weights[n].astype(np.float64) - current[n] for n in current}))
        yield ClientUpdate(client_id, result.num_examples, weights)


@dataclass(frozen=True)
class Population:
    """The data of one population: the dataset (its test split) and each client's partition."""

    dataset: Dataset
    clients: list[LocalData]


def prepare(setting: Setting) -> Population:
    """Load the dataset and split it over the setting's clients, as each worker would."""
    config = load_config(None, BASE | dict(setting.overrides))
    dataset = dataset_from_config(config)
    population = config.num_partitions
    clients = [
        load_local_data(dataset, config, partition_id=k, num_partitions=population)
        for k in range(population)
    ]
    return Population(dataset, clients)


def simulate(setting: Setting, data: Population, *, delta: float, eval_every: int) -> Result:
    """Run one federation in this process; return its accuracy per round and its epsilon."""
    started = time.monotonic()
    config = load_config(None, BASE | dict(setting.overrides))
    dataset, clients = data.dataset, data.clients
    population = config.num_partitions
    client_ids = [str(k) for k in range(population)]  # the runner's client ids
    strategy = build_strategy(config.strategy)
    model = build_model(config.model, **config.model_args())
    current = init_global_weights(config.model, seed=config.seed, **config.model_args())
    m = num_fit_clients(
        population, fraction_fit=config.fraction_fit, min_fit_clients=config.min_fit_clients
    )
    result = Result(setting, m, None)
    for server_round in range(1, config.num_rounds + 1):
        selected = select_clients(
            client_ids,
            server_round=server_round,
            fraction_fit=config.fraction_fit,
            min_fit_clients=config.min_fit_clients,
            seed=config.seed,
        )
        updates = _updates(
            config, model, current, clients, selected, server_round, result.delta_norms
        )
        current = strategy.aggregate(server_round, current, updates)
        if server_round % eval_every == 0 or server_round == config.num_rounds:
            load_numpy_state(model, current)
            test = dataset.test
            accuracy = evaluate(model, test.images, test.labels).accuracy
            result.accuracy.append((server_round, accuracy))
    if setting.noise_multiplier is not None:
        result.epsilon = planned_epsilon(
            config.num_rounds,
            RoundSampling(population, m),
            noise_multiplier=setting.noise_multiplier,
            delta=delta,
        )
    result.seconds = time.monotonic() - started
    return result


def _epsilon_text(epsilon: float | None) -> str:
    if epsilon is None:
        return "-"
    return "inf" if math.isinf(epsilon) else f"{epsilon:.3g}"


def summary_rows(results: Sequence[Result]) -> list[list[str]]:
    """Return per run: N, m, the run, epsilon, final and best accuracy, median delta norm."""
    return [
        [
            str(r.setting.population),
            str(r.clients_per_round),
            r.setting.label,
            _epsilon_text(r.epsilon),
            f"{r.final:.4f}",
            f"{r.best:.4f}",
            f"{statistics.median(r.delta_norms):.3g}",
        ]
        for r in results
    ]


def plot(results: Sequence[Result], out: Path, *, title: str) -> None:
    """Draw final test accuracy against epsilon, one line per population, no-DP dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for population in dict.fromkeys(r.setting.population for r in results):
        runs = [r for r in results if r.setting.population == population]
        noised = sorted(
            ((r.epsilon, r) for r in runs if r.epsilon is not None and math.isfinite(r.epsilon)),
            key=lambda pair: pair[0],
        )
        m = runs[0].clients_per_round
        (line,) = ax.plot(
            [epsilon for epsilon, _ in noised],
            [r.final for _, r in noised],
            marker="o",
            label=f"N = {population}, m = {m}: DP-FedAvg",
        )
        for epsilon, r in noised:
            ax.annotate(
                f"z={r.setting.noise_multiplier:g}",
                (epsilon, r.final),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize="x-small",
                color=line.get_color(),
            )
        for r in runs:
            if r.epsilon is None:
                ax.axhline(r.final, linestyle="--", color=line.get_color(), alpha=0.7)
                ax.annotate(
                    f"N = {population}, no DP",
                    (0.01, r.final),
                    xycoords=("axes fraction", "data"),
                    textcoords="offset points",
                    xytext=(0, 3),
                    fontsize="x-small",
                    color=line.get_color(),
                )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 2, 5, 10, 20, 50
    ax.xaxis.set_major_formatter(ScalarFormatter())  # rather than 2 x 10^0
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("epsilon after the last round (delta = 1e-5), log scale")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(title, fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """Return the script's flags."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--fraction-fit", type=float, default=0.1)
    parser.add_argument("--noise", type=float, nargs="+", default=NOISE, metavar="Z")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clip-norm", type=float, default=0.5, help="C (fixed)")
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=5, help="rounds between evaluations")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dp-client-level.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run every setting, print the table, draw the figure; 2 on a refused config."""
    args = build_parser().parse_args(argv)
    settings = planned_settings(args)
    try:
        for setting in settings:  # every config checked before the first run
            load_config(None, BASE | dict(setting.overrides))
    except ConfigError as exc:  # the config's own message says what is wrong
        print(f"refused config, nothing was run: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # one training at a time, as the worker's clients get
    print(f"command: {command_line('bench/bench_dp.py', sys.argv[1:] if argv is None else argv)}")
    print(f"machine: {machine_line()}", flush=True)
    results = []
    prepared: dict[int, Population] = {}
    for setting in settings:
        if setting.population not in prepared:
            prepared = {setting.population: prepare(setting)}  # one population at a time
        data = prepared[setting.population]
        result = simulate(setting, data, delta=args.delta, eval_every=args.eval_every)
        results.append(result)
        print(
            f"N={setting.population} / {setting.label}: epsilon {_epsilon_text(result.epsilon)}, "
            f"final accuracy {result.final:.4f} ({result.seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    title = (
        f"DP-FedAvg on mnist5k (2NN, IID), {args.rounds} rounds, m = {args.fraction_fit:g} N, "
        f"C = {args.clip_norm:g}, delta = {args.delta:g}"
    )
    plot(results, args.out, title=title)
    print(f"{title}; the server's test accuracy; figure: {args.out}")
    header = ["N", "m", "run", "epsilon", "final", "best", "median delta norm"]
    print(markdown_table(header, summary_rows(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
