"""Client-level accounting: the events dp_accounting composes, and how epsilon moves."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from shared.errors import ConfigError
from shared.privacy.accounting import RoundSampling, epsilon_after, planned_epsilon

DELTA = 1e-5


def _rdp_by_hand(rounds: int, population: int, sample: int, z: float) -> float:
    """The same rounds composed with dp_accounting directly: replace-one, multiplier z / 2."""
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    gaussian = dp_accounting.GaussianDpEvent(z / 2)
    event = dp_accounting.SampledWithoutReplacementDpEvent(population, sample, gaussian)
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(DELTA))


def test_sampled_rounds_are_dp_accountings_sampling_without_replacement() -> None:
    ours = planned_epsilon(20, RoundSampling(1000, 100), noise_multiplier=2.0, delta=DELTA)
    assert ours == _rdp_by_hand(20, 1000, 100, 2.0)
    assert 0 < ours < math.inf


def test_a_round_of_everyone_is_the_gaussian_mechanism_of_multiplier_z_over_2() -> None:
    # RDP of the Gaussian mechanism: alpha / (2 sigma^2) per round; sigma = z / 2 = 1
    rdp = epsilon_after([RoundSampling(10, 10)] * 4, noise_multiplier=2.0, delta=DELTA)
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    # the plain conversion eps = rdp(alpha) + log(1/delta) / (alpha - 1) bounds it from above
    plain = min(4 * a / 2 + math.log(1 / DELTA) / (a - 1) for a in orders)
    assert rdp <= plain
    assert rdp > 0.8 * plain
    pld = epsilon_after(
        [RoundSampling(10, 10)] * 4, noise_multiplier=2.0, delta=DELTA, accountant="pld"
    )
    assert pld <= rdp  # PLD is tight where RDP's conversion is not


def test_epsilon_grows_with_rounds_and_with_the_sampled_share() -> None:
    z = 1.5
    by_rounds = [
        planned_epsilon(k, RoundSampling(100, 10), noise_multiplier=z, delta=DELTA)
        for k in (1, 5, 25)
    ]
    assert by_rounds == sorted(by_rounds)
    assert len(set(by_rounds)) == 3
    by_share = [
        planned_epsilon(5, RoundSampling(100, m), noise_multiplier=z, delta=DELTA)
        for m in (5, 20, 100)
    ]
    assert by_share == sorted(by_share)
    assert len(set(by_share)) == 3
    by_noise = [
        planned_epsilon(5, RoundSampling(100, 10), noise_multiplier=s, delta=DELTA)
        for s in (1.0, 2.0, 4.0)
    ]
    assert by_noise == sorted(by_noise, reverse=True)


def test_a_retried_round_costs_more_than_a_sampled_one() -> None:
    sampled = epsilon_after([RoundSampling(100, 10)] * 3, noise_multiplier=2.0, delta=DELTA)
    retried = epsilon_after(
        [RoundSampling(100, 10)] * 2 + [RoundSampling(60, 60)], noise_multiplier=2.0, delta=DELTA
    )
    assert retried > sampled


def test_no_noise_is_infinite_and_no_round_is_zero() -> None:
    assert epsilon_after([RoundSampling(10, 5)], noise_multiplier=0.0, delta=DELTA) == math.inf
    assert epsilon_after([], noise_multiplier=1.0, delta=DELTA) == 0.0


def test_pld_refuses_sampling_without_replacement() -> None:
    with pytest.raises(ConfigError, match="PLD accountant cannot model sampling"):
        epsilon_after([RoundSampling(100, 10)], noise_multiplier=1.0, delta=DELTA, accountant="pld")


def test_a_sample_larger_than_the_population_is_refused() -> None:
    with pytest.raises(ConfigError, match="m=11 of N=10"):
        RoundSampling(10, 11)
