"""Tests of what bench_compare.py prints and draws, from made-up runs."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from _experiments import Run
from bench_compare import planned_runs, plot, summary_rows


def _run(*scores: float, error: str | None = None, diverged: bool = False) -> Run:
    rows = [{"round": i, "eval_accuracy": a} for i, a in enumerate(scores, 1)]
    return Run(rows, error, diverged)


def test_the_compare_rows_give_the_round_at_90_percent_of_the_best() -> None:
    runs = {("#C=2", "fedavg"): _run(0.2, 0.5, 0.95, 1.0, 0.96), ("#C=2", "scaffold"): _run()}
    assert summary_rows(runs) == [
        ["#C=2", "fedavg", "0.9600", "1.0000", "3"],
        ["#C=2", "scaffold", "failed", "-", "-"],
    ]


def test_the_figure_is_a_png_with_a_panel_per_split(tmp_path: Path) -> None:
    runs = {("a", "fedavg"): _run(0.2, 0.5), ("b", "fedavg"): _run(0.1), ("b", "x"): _run()}
    out = tmp_path / "img" / "compare.png"
    plot(runs, out, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_strategy_runs_on_both_splits() -> None:
    args = Namespace(clients=10, rounds=30, strategy=None, alpha=0.3, k=2)
    runs = planned_runs(args)
    strategies = ["fedavg", "fedavgm", "fedprox:mu=0.01", "fedadam:eta=0.01,tau=0.001"]
    strategies += ["fedyogi:eta=0.01,tau=0.001", "scaffold"]
    splits = ["Dirichlet(0.3)", "#C=2"]
    assert list(runs) == [(split, s) for split in splits for s in strategies]
    assert runs["#C=2", "fedprox:mu=0.01"] == {
        "num_partitions": 10,
        "num_rounds": 30,
        "partition": {"name": "labels_per_client", "k": 2},
        "strategy": {"name": "fedprox", "mu": 0.01},
    }
    assert runs["Dirichlet(0.3)", "fedavg"]["partition"] == {"name": "dirichlet", "alpha": 0.3}
