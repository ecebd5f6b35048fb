"""Tests of what bench_dp_sgd.py runs and prints, from made-up runs."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

from _experiments import Run
from bench_dp_sgd import COLUMN, client_epsilons, planned_runs, plot, results_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _args(**fields: Any) -> Namespace:
    base = {"clients": 10, "rounds": 10, "strategy": None, "noise": None, "clip": 1.0}
    return Namespace(**(base | {"delta": 1e-5, "reference_lr": 0.05} | fields))


def _run(*rows: tuple[float, float | None]) -> Run:
    """Rows of (accuracy, largest epsilon); the clients' range is [epsilon / 2, epsilon]."""
    history = []
    for index, (accuracy, epsilon) in enumerate(rows, 1):
        row: dict[str, Any] = {"round": index, "eval_accuracy": accuracy, "metrics": {}}
        if epsilon is not None:
            row["dp_sgd_epsilon_max"] = epsilon
            row["metrics"] = {"dp_epsilon": {"min": epsilon / 2, "max": epsilon}}
        history.append(row)
    return Run(history)


def test_the_reference_runs_first_then_each_noise_level_without_a_budget() -> None:
    runs = planned_runs(_args(noise=[0.5, 3.0], clip=2.0))
    reference = ("no DP (lr 0.05)", COLUMN)
    assert list(runs) == [reference, ("sigma 0.5", COLUMN), ("sigma 3", COLUMN)]
    assert runs[reference] == {"num_partitions": 10, "num_rounds": 10, "dp_sgd": None, "lr": 0.05}
    assert runs["sigma 3", COLUMN]["dp_sgd"] == {
        "noise_multiplier": 3.0,
        "max_grad_norm": 2.0,
        "delta": 1e-5,
        "target_epsilon": None,  # every run trains all its rounds
    }
    labels = [key[0] for key in planned_runs(_args(reference_lr=0.1))]
    assert labels == ["no DP (lr 0.1)", "sigma 0.7", "sigma 1", "sigma 2"]


def test_the_table_gives_accuracy_and_the_clients_epsilon() -> None:
    args = _args(noise=[1.0])
    settings = planned_runs(args)
    runs = {
        ("no DP (lr 0.05)", COLUMN): _run((0.8, None), (0.9, None)),
        ("sigma 1", COLUMN): _run((0.6, 2.0), (0.55, 3.0)),
    }
    assert client_epsilons(runs["sigma 1", COLUMN]) == (1.5, 3.0)
    assert client_epsilons(runs["no DP (lr 0.05)", COLUMN]) is None
    assert client_epsilons(Run([])) is None
    assert results_table(runs, settings).splitlines() == [
        "| setting | sigma | C | rounds | final accuracy | best | epsilon (max) "
        "| epsilon range over clients |",
        "|---|---|---|---|---|---|---|---|",
        "| no DP (lr 0.05) | - | - | 2 | 0.9000 | 0.9000 | - | - |",
        "| sigma 1 | 1 | 1 | 2 | 0.5500 | 0.6000 | 3.00 | 1.50 - 3.00 |",
    ]


def test_the_figure_is_written(tmp_path: Path) -> None:
    runs = {
        ("no DP", COLUMN): _run((0.8, None), (0.9, None)),
        ("sigma 1", COLUMN): _run((0.6, 2.0), (0.7, 3.0)),
    }
    out = tmp_path / "img" / "dp-sgd.png"
    plot(runs, out, title="test")
    assert out.read_bytes().startswith(PNG_MAGIC)
