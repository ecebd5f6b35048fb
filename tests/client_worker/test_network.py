"""Tests of the simulated network: profile selection, delays, dropout and crash decisions."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from client_worker.network import (
    NetworkSimulator,
    parse_clients,
    select_profile,
    slowed_clients,
)
from shared.config import NetworkProfile, load_config
from shared.errors import ConfigError


class _Recorder:
    """A sleep that records its delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("7-9", {7, 8, 9}),
        ("0,2,5", {0, 2, 5}),
        ("0,3-5", {0, 3, 4, 5}),
        (" 4 ", {4}),
    ],
)
def test_parse_clients(selector: str, expected: set[int]) -> None:
    assert parse_clients(selector) == frozenset(expected)


def test_parse_clients_all_and_errors() -> None:
    assert parse_clients("all") is None
    with pytest.raises(ConfigError, match="'x'"):
        parse_clients("1,x")
    with pytest.raises(ConfigError, match="bad range"):
        parse_clients("5-3")


def test_first_matching_profile_applies() -> None:
    slow = NetworkProfile(clients="7-9", latency_ms=100)
    flaky = NetworkProfile(clients="0,3-5,8", dropout=0.5)
    rest = NetworkProfile(clients="all", latency_ms=1)
    profiles = [slow, flaky, rest]
    assert select_profile(profiles, 8) is slow  # in both 7-9 and 8: the first wins
    assert select_profile(profiles, 4) is flaky
    assert select_profile(profiles, 6) is rest
    assert select_profile([slow], 2) == NetworkProfile()  # no match: all off


def test_default_adds_no_delay_and_never_fails() -> None:
    sleep = _Recorder()
    sim = NetworkSimulator(sleep=sleep)
    assert sim.before_request() == 0.0
    assert sim.after_transfer(10**9) == 0.0
    assert sleep.delays == []
    assert not any(sim.drops_round(r) for r in range(1, 200))
    assert all(sim.crash_point(r, 10) is None for r in range(1, 200))
    assert not sim.enabled
    assert sim.describe() == "network simulation off"


def test_fixed_latency_and_bandwidth_delay() -> None:
    sleep = _Recorder()
    profile = NetworkProfile(latency_ms=250, bandwidth_mbit=8)
    sim = NetworkSimulator(profile, sleep=sleep)
    assert sim.before_request() == pytest.approx(0.25)
    # 2 MB at 8 Mbit/s: 2e6 * 8 bits / 8e6 bit/s = 2 s.
    assert sim.after_transfer(2_000_000) == pytest.approx(2.0)
    assert sleep.delays == pytest.approx([0.25, 2.0])
    assert sim.total_delay_s == pytest.approx(2.25)


@pytest.mark.parametrize("jitter", ["exponential", "normal"])
def test_jitter_is_seeded_and_reproducible(jitter: Literal["exponential", "normal"]) -> None:
    profile = NetworkProfile(latency_ms=10, jitter=jitter, jitter_ms=20)
    first = NetworkSimulator(profile, seed=3, client_index=2)
    second = NetworkSimulator(profile, seed=3, client_index=2)
    other = NetworkSimulator(profile, seed=3, client_index=4)
    draws = [first.latency_s() for _ in range(500)]
    assert draws == [second.latency_s() for _ in range(500)]
    assert draws != [other.latency_s() for _ in range(500)]
    assert min(draws) >= 0.010  # jitter only adds
    # Exponential with mean 20 ms; half-normal with sigma 20 ms has mean 20*sqrt(2/pi) ms.
    mean_jitter = 20.0 if jitter == "exponential" else 20.0 * np.sqrt(2 / np.pi)
    assert np.mean(draws) == pytest.approx((10 + mean_jitter) / 1000, rel=0.15)


def test_dropout_frequency_is_near_the_probability() -> None:
    sim = NetworkSimulator(NetworkProfile(dropout=0.3), seed=1, client_index=5)
    dropped = [sim.drops_round(r) for r in range(1, 2001)]
    assert np.mean(dropped) == pytest.approx(0.3, abs=0.04)
    # A round's decision does not depend on what was asked before.
    again = NetworkSimulator(NetworkProfile(dropout=0.3), seed=1, client_index=5)
    assert [again.drops_round(r) for r in range(2000, 0, -1)] == dropped[::-1]


def test_crash_points_fall_inside_training_and_rejoin_is_seeded() -> None:
    sim = NetworkSimulator(NetworkProfile(crash=0.5), seed=2, client_index=1)
    points = [sim.crash_point(r, num_batches=10) for r in range(1, 1001)]
    crashed = [p for p in points if p is not None]
    assert len(crashed) / len(points) == pytest.approx(0.5, abs=0.05)
    assert all(0 <= p < 10 for p in crashed)
    sleep = _Recorder()
    rejoining = NetworkSimulator(NetworkProfile(crash=0.5), seed=2, client_index=1, sleep=sleep)
    delay = rejoining.rejoin(7)
    assert 1.0 <= delay <= 5.0
    assert sleep.delays == [delay]
    assert rejoining.rejoin_delay_s(7) == delay


def test_from_config_uses_the_clients_partition_id() -> None:
    config = load_config(
        overrides={"network": [{"clients": "2-3", "latency_ms": 40, "bandwidth_mbit": 1}]}
    )
    assert NetworkSimulator.from_config(config, client_index=3, seed=0).latency_s() == 0.04
    assert not NetworkSimulator.from_config(config, client_index=4, seed=0).enabled
    text = NetworkSimulator.from_config(config, client_index=2, seed=0).describe()
    assert "latency 40 ms" in text
    assert "bandwidth 1 Mbit/s" in text


def test_slowdown_waits_the_extra_time_of_a_slower_device() -> None:
    sleep = _Recorder()
    sim = NetworkSimulator(NetworkProfile(slowdown=5.0), sleep=sleep)
    assert sim.slow_down(0.5) == pytest.approx(2.0)  # (5 - 1) * 0.5 s
    assert sleep.delays == pytest.approx([2.0])
    assert sim.total_delay_s == pytest.approx(2.0)
    assert sim.enabled
    assert "training slowed down 5x" in sim.describe()


def test_no_slowdown_by_default() -> None:
    sleep = _Recorder()
    sim = NetworkSimulator(sleep=sleep)
    assert NetworkProfile().slowdown == 1.0
    assert sim.slow_down(3.0) == 0.0
    assert sleep.delays == []


def test_slowdown_is_selected_per_client_and_validated() -> None:
    config = load_config(overrides={"network": [{"clients": "7-9", "slowdown": 5}]})
    assert NetworkSimulator.from_config(config, client_index=8, seed=0).slowdown_s(1.0) == 4.0
    assert NetworkSimulator.from_config(config, client_index=6, seed=0).slowdown_s(1.0) == 0.0
    with pytest.raises(ConfigError, match="slowdown"):
        load_config(overrides={"network": [{"clients": "all", "slowdown": 0.5}]})


def test_slowed_clients_counts_those_whose_profile_slows_them_down() -> None:
    profiles = [NetworkProfile(clients="7-9", slowdown=5.0), NetworkProfile(latency_ms=10)]
    assert slowed_clients(profiles, range(6, 11)) == 3
    assert slowed_clients(profiles, [0, 1]) == 0
    assert slowed_clients([], [7]) == 0
