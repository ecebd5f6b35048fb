"""Tests of bench_dp.py: the runs it plans, a tiny simulated federation, its table and figure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench_dp import (
    CLIP_ONLY,
    NO_DP,
    Result,
    build_parser,
    planned_settings,
    plot,
    prepare,
    simulate,
    summary_rows,
)

from shared.privacy.accounting import RoundSampling, planned_epsilon


def test_each_population_runs_no_dp_clipping_alone_and_each_noise() -> None:
    args = build_parser().parse_args(["--populations", "100", "1000", "--noise", "1", "4"])
    settings = planned_settings(args)
    assert [(s.population, s.label) for s in settings] == [
        (p, label) for p in (100, 1000) for label in (NO_DP, CLIP_ONLY, "z = 1", "z = 4")
    ]
    assert [s.noise_multiplier for s in settings[:4]] == [None, 0.0, 1.0, 4.0]
    dp = settings[3].overrides
    assert dp["strategy"] == {
        "name": "dpfedavg",
        "clip_norm": 0.5,
        "server_lr": 1.0,
        "delta": 1e-5,
        "noise_seed": 0,
        "noise_multiplier": 4.0,
    }
    assert (dp["num_partitions"], dp["fraction_fit"], dp["num_rounds"]) == (100, 0.1, 50)
    assert settings[0].overrides["strategy"] == "fedavg"


def test_a_tiny_federation_reports_the_accountants_epsilon() -> None:
    args = build_parser().parse_args(
        ["--populations", "20", "--fraction-fit", "0.25", "--noise", "2", "--rounds", "2"]
    )
    no_dp, clip_only, noised = planned_settings(args)
    data = prepare(noised)
    assert len(data.clients) == 20
    result = simulate(noised, data, delta=1e-5, eval_every=1)
    assert result.clients_per_round == 5
    expected = planned_epsilon(2, RoundSampling(20, 5), noise_multiplier=2.0, delta=1e-5)
    assert result.epsilon == expected
    assert [r for r, _ in result.accuracy] == [1, 2]
    assert len(result.delta_norms) == 2 * 5
    assert simulate(clip_only, data, delta=1e-5, eval_every=2).epsilon == math.inf
    reference = simulate(no_dp, data, delta=1e-5, eval_every=2)
    assert reference.epsilon is None
    assert 0.0 <= reference.final <= 1.0


def _result(population: int, label: str, z: float | None, epsilon: float | None) -> Result:
    args = build_parser().parse_args(["--populations", str(population), "--noise", "1"])
    setting = next(s for s in planned_settings(args) if s.label == label)
    assert setting.noise_multiplier == z
    return Result(setting, population // 10, epsilon, [(1, 0.5), (2, 0.75)], [0.25, 0.5, 1.0])


def test_the_table_and_the_figure(tmp_path: Path) -> None:
    results = [
        _result(100, NO_DP, None, None),
        _result(100, CLIP_ONLY, 0.0, math.inf),
        _result(100, "z = 1", 1.0, 47.04),
    ]
    assert summary_rows(results) == [
        ["100", "10", NO_DP, "-", "0.7500", "0.7500", "0.5"],
        ["100", "10", CLIP_ONLY, "inf", "0.7500", "0.7500", "0.5"],
        ["100", "10", "z = 1", "47", "0.7500", "0.7500", "0.5"],
    ]
    out = tmp_path / "img" / "dp.png"
    plot(results, out, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag", ["--populations", "--noise"])
def test_lists_take_several_values(flag: str) -> None:
    args = build_parser().parse_args([flag, "3", "5"])
    assert getattr(args, flag.removeprefix("--")) == [3, 5]
