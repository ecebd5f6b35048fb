"""Tests of what bench_async.py plans and prints, from made-up runs."""

from __future__ import annotations

from argparse import Namespace

from _experiments import REPO, Run, check_configs
from bench_async import MODES, SYNC_ALL, elapsed, planned_runs, summary_rows, time_to, wasted

from shared.timeline import ClientTotals

ARGS = Namespace(slow_clients="7-9", slowdown=5.0)


def _run(*rounds: tuple[float, float, int], posted: int | None = None) -> Run:
    """Rounds of (accuracy, finished_at, participants), the first opened at 10.0."""
    rows = [
        {
            "round": i,
            "eval_accuracy": a,
            "finished_at": t,
            "duration_s": t - 10.0 if i == 1 else 1.0,
            "participants": [str(k) for k in range(n)],
        }
        for i, (a, t, n) in enumerate(rounds, 1)
    ]
    timeline = () if posted is None else (ClientTotals("0", updates=posted),)
    return Run(rows, timeline=timeline)


def test_every_mode_runs_with_the_same_stragglers_and_its_configs_load() -> None:
    runs = planned_runs(ARGS)
    assert [mode for _, mode in runs] == list(MODES)
    for overrides in runs.values():
        assert overrides["network"] == [{"clients": "7-9", "slowdown": 5.0}]
        assert overrides["min_available_clients"] == 10
    assert runs["clients 7-9 5x slower", "FedBuff K=5"]["async"] == {"buffer_size": 5}
    assert runs["clients 7-9 5x slower", SYNC_ALL]["num_rounds"] == 15
    assert check_configs(REPO / "configs" / "demo.yaml", runs) == []


def test_wall_time_counts_from_the_first_opening() -> None:
    rows = _run((0.8, 12.0, 3), (0.91, 13.5, 3), (0.95, 15.0, 3)).rows
    assert elapsed(rows) == [2.0, 3.5, 5.0]
    assert time_to(rows, 0.9) == 3.5
    assert time_to(rows, 0.99) is None


def test_wasted_updates_are_posted_ones_no_round_used() -> None:
    assert wasted(_run((0.8, 12.0, 3), (0.9, 13.0, 3), posted=8)) == 2
    assert wasted(_run((0.8, 12.0, 3))) is None


def test_the_rows_give_the_speedup_against_waiting_for_all() -> None:
    group = "clients 7-9 5x slower"
    runs = {
        (group, SYNC_ALL): _run((0.85, 16.0, 10), (0.92, 22.0, 10), posted=20),
        (group, "FedBuff K=3"): _run((0.88, 12.0, 3), (0.91, 13.0, 3), posted=7),
        (group, "FedAsync a=0.6"): Run([]),
    }
    assert summary_rows(runs, target=0.9) == [
        [SYNC_ALL, "2", "20", "0", "12.0", "12.0", "1.00x", "0.9200"],
        ["FedBuff K=3", "2", "6", "1", "3.0", "3.0", "4.00x", "0.9100"],
        ["FedAsync a=0.6", "failed", "-", "-", "-", "-", "-", "-"],
    ]
