"""Client-level (epsilon, delta) of DP-FedAvg rounds, with Google's dp_accounting.

Each round releases the sum of the selected clients' clipped deltas plus Gaussian noise of
std z * C per coordinate. Our selection draws m of the N clients uniformly *without
replacement* (aggregator_service/federation/selection.py), which dp_accounting models as
`SampledWithoutReplacementDpEvent` (Wang, Balle, Kasiviswanathan 2019, Theorem 27). That
analysis is for the replace-one relation (N is public): replacing one client's data moves
the sum of clipped deltas by up to 2C, so the event's noise multiplier, std over
sensitivity, is z / 2. A round that invited every active client (a retried round) has no
sampling to amplify: it is a plain Gaussian event with the same multiplier. With adaptive
clipping the update's noise z_delta and the clipped-count noise sigma_b together amount to
one Gaussian mechanism of multiplier z (Andrew et al. 2021, section 3.1), so z is what is
accounted. The PLD accountant of dp_accounting 0.6 has no event for sampling without
replacement: it is refused for sampled rounds (docs/privacy.md).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from shared.errors import ConfigError

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "RoundSampling",
    "epsilon_after",
    "planned_epsilon",
    "round_event",
]

Accountant = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "pld")
_REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE
_REPLACE_SENSITIVITY = 2.0  # ||sum - sum'|| <= 2C when one client's clipped delta is replaced

# dp_accounting logs (absl) each RDP order whose series does not converge and then skips it;
# that is expected at the lowest orders and says nothing about the result
logging.getLogger("absl").setLevel(logging.ERROR)


@dataclass(frozen=True)
class RoundSampling:
    """Who could take part in one round: `sample_size` of `population` clients, no replacement."""

    population: int  # N: the clients the round was drawn from
    sample_size: int  # m: how many were drawn (population: everyone, no sampling)

    def __post_init__(self) -> None:
        if not 1 <= self.sample_size <= self.population:
            raise ConfigError(
                f"a round samples between 1 and N clients; got m={self.sample_size} "
                f"of N={self.population}"
            )

    @property
    def sampled(self) -> bool:
        """Whether only part of the population was drawn (privacy amplification applies)."""
        return self.sample_size < self.population


def round_event(noise_multiplier: float, sampling: RoundSampling) -> dp_accounting.DpEvent:
    """Return the DpEvent of one round (replace-one relation: multiplier z / 2)."""
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / _REPLACE_SENSITIVITY)
    if not sampling.sampled:
        return gaussian
    return dp_accounting.SampledWithoutReplacementDpEvent(
        source_dataset_size=sampling.population,
        sample_size=sampling.sample_size,
        event=gaussian,
    )


def epsilon_after(
    rounds: Iterable[RoundSampling],
    *,
    noise_multiplier: float,
    delta: float,
    accountant: Accountant = "rdp",
) -> float:
    """Return the epsilon at `delta` of the rounds composed (inf without noise; 0 for none)."""
    counts = Counter(rounds)
    if not counts:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if accountant == "pld" and any(s.sampled for s in counts):
        raise ConfigError(
            "the PLD accountant cannot model sampling m of N clients without replacement "
            "(dp_accounting has no such PLD event); use accountant: rdp, or fraction_fit: 1"
        )
    # The events' multiplier is already std over the replace-one sensitivity 2C. RDP needs
    # the replace-one relation for sampling without replacement (its Gaussian event is the
    # same under any relation); PLD's replace-one would double the sensitivity once more,
    # so PLD, which gets unsampled rounds only, composes plain Gaussians of multiplier z / 2.
    tracker = (
        RdpAccountant(neighboring_relation=_REPLACE_ONE)
        if accountant == "rdp"
        else PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    )
    for sampling, count in counts.items():
        tracker.compose(round_event(noise_multiplier, sampling), count)
    return float(tracker.get_epsilon(delta))


def planned_epsilon(
    num_rounds: int,
    sampling: RoundSampling,
    *,
    noise_multiplier: float,
    delta: float,
    accountant: Accountant = "rdp",
) -> float:
    """Return the epsilon after `num_rounds` rounds, each sampled as `sampling`."""
    return epsilon_after(
        [sampling] * num_rounds,
        noise_multiplier=noise_multiplier,
        delta=delta,
        accountant=accountant,
    )
