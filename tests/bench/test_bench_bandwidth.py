"""Tests of what bench_bandwidth.py plans and prints, from made-up runs."""

from __future__ import annotations

from argparse import Namespace

from _experiments import Run
from bench_bandwidth import ENCODINGS, planned_runs, summary_rows, time_to, wall_times


def _run(*rounds: tuple[float, float, int]) -> Run:
    rows = [
        {"round": i, "eval_accuracy": a, "duration_s": s, "bytes_in": sent, "bytes_out": 500}
        for i, (a, s, sent) in enumerate(rounds, 1)
    ]
    return Run(rows)


def test_every_encoding_runs_at_every_bandwidth_with_capped_links() -> None:
    args = Namespace(clients=10, rounds=15, bandwidth_mbit=[20.0, 5.0], jitter_ms=20.0)
    runs = planned_runs(args)
    assert list(runs) == [(link, e) for link in ("20 Mbit/s", "5 Mbit/s") for e in ENCODINGS]
    assert "compression" not in runs["20 Mbit/s", "none"]
    assert runs["5 Mbit/s", "q8 up, q8 down"] == {
        "num_partitions": 10,
        "num_rounds": 15,
        "network": [
            {"clients": "all", "bandwidth_mbit": 5.0, "jitter": "exponential", "jitter_ms": 20.0}
        ],
        "compression": {"encoding": "q8"},
        "download_compression": {"encoding": "q8"},
    }
    plain = planned_runs(Namespace(clients=3, rounds=2, bandwidth_mbit=[1.0], jitter_ms=0.0))
    assert plain["1 Mbit/s", "none"]["network"] == [{"clients": "all", "bandwidth_mbit": 1.0}]


def test_wall_time_accumulates_and_the_target_is_the_first_round_reaching_it() -> None:
    rows = _run((0.8, 2.0, 1), (0.91, 1.5, 1), (0.89, 1.0, 1), (0.95, 0.5, 1)).rows
    assert wall_times(rows) == [2.0, 3.5, 4.5, 5.0]
    assert time_to(rows, 0.9) == 3.5
    assert time_to(rows, 0.99) is None


def test_the_rows_give_round_time_uplink_and_the_speedup_against_none() -> None:
    runs = {
        ("20 Mbit/s", "none"): _run((0.85, 3.0, 8_000_000), (0.92, 3.0, 8_000_000)),
        ("20 Mbit/s", "q8 up"): _run((0.86, 1.0, 2_000_000), (0.91, 1.0, 2_000_000)),
        ("20 Mbit/s", "q8 up, q8 down"): Run([]),
    }
    assert summary_rows(runs, target=0.9) == [
        ["20 Mbit/s", "none", "3.00", "8.000", "0.001", "0.9200", "6.0", "1.00x"],
        ["20 Mbit/s", "q8 up", "1.00", "2.000", "0.001", "0.9100", "2.0", "3.00x"],
        ["20 Mbit/s", "q8 up, q8 down", "failed", "-", "-", "-", "-", "-"],
    ]
