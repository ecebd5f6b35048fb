"""Tests of what bench_compression.py plans and prints, from made-up runs."""

from __future__ import annotations

from argparse import Namespace

import pytest
from _experiments import Run
from bench_compression import ENCODINGS, planned_runs, summary_rows

from shared.errors import ConfigError


def _run(*rounds: tuple[float, int, int]) -> Run:
    rows = [
        {"round": i, "eval_accuracy": a, "bytes_in": sent, "raw_bytes_in": raw, "bytes_out": 10}
        for i, (a, sent, raw) in enumerate(rounds, 1)
    ]
    return Run(rows)


def test_every_encoding_runs_on_both_splits() -> None:
    args = Namespace(clients=10, rounds=20, strategy=None, alpha=0.3)
    runs = planned_runs(args)
    splits = ["IID", "Dirichlet(0.3)"]
    assert list(runs) == [(split, label) for split in splits for label in ENCODINGS]
    assert "compression" not in runs["IID", "none"]
    assert runs["Dirichlet(0.3)", "top-k 0.01 + EF"] == {
        "num_partitions": 10,
        "num_rounds": 20,
        "partition": {"name": "dirichlet", "alpha": 0.3},
        "strategy": {"name": "fedavg"},
        "compression": {"encoding": "topk", "fraction": 0.01, "values": "q8"},
    }


def test_the_rows_give_the_loss_against_no_compression_and_the_ratios() -> None:
    runs = {
        ("IID", "none"): _run((0.5, 4_000_000, 4_000_000), (0.9, 4_000_000, 4_000_000)),
        ("IID", "q8"): _run((0.5, 1_000_000, 4_000_000), (0.88, 1_000_000, 4_000_000)),
        ("IID", "q4"): Run([]),
    }
    assert summary_rows(runs) == [
        ["IID", "none", "0.9000", "0.9000", "+0.0", "4.000", "1.0x", "0.000", "1.0x"],
        ["IID", "q8", "0.8800", "0.8800", "+2.0", "1.000", "4.0x", "0.000", "1.0x"],
        ["IID", "q4", "failed", "-", "-", "-", "-", "-", "-"],
    ]


def test_splits_and_encodings_can_be_chosen() -> None:
    args = Namespace(
        clients=3, rounds=8, strategy=None, alpha=0.3, splits=["iid"], encodings=["none", "q8"]
    )
    assert list(planned_runs(args)) == [("IID", "none"), ("IID", "q8")]
    with pytest.raises(ConfigError, match="unknown \\['q9'\\]"):
        planned_runs(Namespace(**{**vars(args), "encodings": ["q9"]}))
