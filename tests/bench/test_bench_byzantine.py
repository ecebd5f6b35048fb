"""Tests of what bench_byzantine.py prints, from made-up runs."""

from __future__ import annotations

from argparse import Namespace

from _experiments import Run
from bench_byzantine import planned_runs, results_table


def _run(*scores: float, error: str | None = None, diverged: bool = False) -> Run:
    rows = [{"round": i, "eval_accuracy": a} for i, a in enumerate(scores, 1)]
    return Run(rows, error, diverged)


def test_the_byzantine_table_has_a_final_and_a_best_column_per_setting() -> None:
    runs = {
        ("fedavg", "honest"): _run(0.5, 0.9, 0.85),
        ("fedavg", "sign-flip"): _run(0.3, 0.1, error="exit code 1", diverged=True),
        ("fedavg", "gaussian"): _run(0.3, error="exit code 1"),
        ("fedmedian", "sign-flip"): _run(),
    }
    assert results_table(runs).splitlines() == [
        "| strategy | honest: final | best | sign-flip: final | best | gaussian: final | best |",
        "|---|---|---|---|---|---|---|",
        "| fedavg | 0.8500 | 0.9000 | 0.1000 (diverged after round 2) | 0.3000 "
        "| 0.3000 (failed after round 1) | 0.3000 |",
        "| fedmedian | - | - | failed | - | - | - |",
    ]


def test_by_default_fedavg_runs_honest_then_every_strategy_under_each_attack() -> None:
    args = Namespace(
        clients=10, rounds=20, strategy=None, attack=None, honest_all=False, byzantine="0-1"
    )
    runs = planned_runs(args)
    strategies = ["fedavg", "fedmedian", "fedtrimmedavg:beta=0.2"]
    strategies += ["krum:num_malicious_clients=2", "multi-krum"]
    attacks = ["sign-flip x10", "gaussian std 1"]
    assert list(runs) == [("fedavg", "honest")] + [(s, a) for a in attacks for s in strategies]
    assert runs["fedavg", "honest"] == {
        "num_partitions": 10,
        "num_rounds": 20,
        "strategy": {"name": "fedavg"},
        "byzantine": [],
    }
    assert runs["multi-krum", "sign-flip x10"] == {
        "num_partitions": 10,
        "num_rounds": 20,
        "strategy": {"name": "krum", "num_malicious_clients": 2, "num_clients_to_keep": 8},
        "byzantine": [{"clients": "0-1", "attack": "sign_flip", "scale": 10}],
    }
    assert runs["fedmedian", "gaussian std 1"]["byzantine"] == [
        {"clients": "0-1", "attack": "gaussian", "std": 1.0}
    ]


def test_honest_all_runs_every_strategy_without_attackers_too() -> None:
    args = Namespace(
        clients=4,
        rounds=2,
        strategy=["fedavg", "fedmedian"],
        attack=["gaussian:std=0.5"],
        honest_all=True,
        byzantine="3",
    )
    assert list(planned_runs(args)) == [
        ("fedavg", "honest"),
        ("fedmedian", "honest"),
        ("fedavg", "gaussian:std=0.5"),
        ("fedmedian", "gaussian:std=0.5"),
    ]
