"""The run's privacy ledger: how each round sampled its clients, epsilon so far, the budget.

Every closed round of a DP-FedAvg run adds one `RoundSampling` to the ledger and its
`/history` row gets `epsilon` (after that round), `delta` and `dp_sampling`, from which a
restarted aggregator rebuilds the ledger. A round is accounted as sampled m of N without
replacement when its clients were drawn by selection (N: the clients it was drawn from);
a retried round, which invites every active client, as a round without sampling, the
conservative reading. Before a round opens (and before one is retried) the round loop asks
`over_budget`: the epsilon after it, were it run, against `target_epsilon`.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator_service.federation.state import RoundState
from shared.config import DPFedAvgConfig, ExperimentConfig
from shared.privacy.accounting import Accountant, RoundSampling, epsilon_after

__all__ = ["BUDGET_REASON", "BudgetCheck", "RunPrivacy", "round_sampling"]

BUDGET_REASON = "privacy budget"


@dataclass(frozen=True)
class BudgetCheck:
    """The epsilon so far and after the next round, against the target (None: no target)."""

    epsilon: float
    next_epsilon: float
    target_epsilon: float | None

    @property
    def exceeded(self) -> bool:
        """Whether running the next round would spend more than the target."""
        return self.target_epsilon is not None and self.next_epsilon > self.target_epsilon

    def message(self, done_rounds: int) -> str:
        """Return the log line of a budget stop after `done_rounds`."""
        return (
            f"privacy budget: epsilon would reach {self.next_epsilon:.4g} after round "
            f"{done_rounds + 1}, above target_epsilon {self.target_epsilon:g}; the run "
            f"finishes after round {done_rounds} at epsilon {self.epsilon:.4g}"
        )


def round_sampling(round_state: RoundState) -> RoundSampling:
    """Return how a training round's clients were chosen (a retried round: all of them)."""
    selected = max(len(round_state.selected), 1)
    if round_state.attempt > 0 or round_state.drawn_from is None:
        return RoundSampling(selected, selected)
    return RoundSampling(max(round_state.drawn_from, selected), selected)


class RunPrivacy:
    """The accountant of one DP-FedAvg run."""

    def __init__(self, strategy: DPFedAvgConfig, history: Sequence[dict[str, Any]] = ()) -> None:
        self.noise_multiplier = strategy.noise_multiplier
        self.delta = strategy.delta
        self.target_epsilon = strategy.target_epsilon
        self.accountant: Accountant = strategy.accountant
        self.rounds = [RoundSampling(**row["dp_sampling"]) for row in history]
        self.budget_stop: dict[str, Any] | None = None

    @classmethod
    def of(cls, config: ExperimentConfig, history: Sequence[dict[str, Any]]) -> RunPrivacy | None:
        """Return the run's accountant, or None when the strategy is not DP-FedAvg."""
        if not isinstance(config.strategy, DPFedAvgConfig):
            return None
        return cls(config.strategy, history)

    def epsilon(self, more: Iterable[RoundSampling] = ()) -> float:
        """Return epsilon at delta after the ledger's rounds and `more`."""
        counts = Counter([*self.rounds, *more])
        return _epsilon(
            frozenset(counts.items()), self.noise_multiplier, self.delta, self.accountant
        )

    def check(self, sampling: RoundSampling) -> BudgetCheck:
        """Return the epsilon now and after one more round sampled as `sampling`."""
        return BudgetCheck(self.epsilon(), self.epsilon([sampling]), self.target_epsilon)

    def close_round(self, round_state: RoundState) -> dict[str, Any]:
        """Add a closed round to the ledger; return its /history fields."""
        sampling = round_sampling(round_state)
        self.rounds.append(sampling)
        return {
            "epsilon": _json_number(self.epsilon()),
            "delta": self.delta,
            "dp_sampling": {"population": sampling.population, "sample_size": sampling.sample_size},
        }

    def status(self, clip_norm: float | None) -> dict[str, Any]:
        """Return the /status `privacy` object."""
        return {
            "epsilon": _json_number(self.epsilon()),
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": clip_norm,
            "rounds_accounted": len(self.rounds),
            "budget_stop": self.budget_stop,
        }


def _json_number(value: float) -> float | None:
    """JSON has no infinity: an infinite epsilon (no noise) is null."""
    return value if math.isfinite(value) else None


@functools.lru_cache(maxsize=64)
def _epsilon(
    counts: frozenset[tuple[RoundSampling, int]], z: float, delta: float, accountant: Accountant
) -> float:
    """Return epsilon of a multiset of rounds (cached: the loop asks the same twice a round)."""
    rounds = [sampling for sampling, count in counts for _ in range(count)]
    return epsilon_after(rounds, noise_multiplier=z, delta=delta, accountant=accountant)
