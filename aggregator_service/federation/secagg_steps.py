"""The round loop's secure-aggregation transitions: stage advances, retries and the close.

`RoundLoop` hands a training round that has a `SecAggRound` to `SecAggSteps.step`, under
the state's condition: the current stage waits, advances (the next stage's clients are
woken through their `News`), or the attempt closes or is retried, which the loop then runs
outside the lock. A retry is the same round from key advertisement as attempt + 1, every
active client invited; the close rebuilds the sum and gives it to the strategy's
`aggregate_sum`, then the loop concludes the round as any other.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping

import numpy as np

from aggregator_service.federation.news import News
from aggregator_service.federation.secagg_loop import (
    advance_stage,
    stage_decision,
    summed_deltas,
)
from aggregator_service.federation.secagg_round import SecAggRound
from aggregator_service.federation.state import FederationState, RoundState, UpdateRecord
from aggregator_service.strategy import Strategy
from shared.errors import SecAggError

__all__ = ["Conclude", "Install", "SecAggSteps"]

log = logging.getLogger("aggregator_service.federation.rounds")

Install = Callable[[RoundState, Mapping[str, np.ndarray]], None]
Conclude = Callable[[RoundState, list[UpdateRecord], dict[str, np.ndarray], float], None]


class SecAggSteps:
    """What the round loop does with a secure-aggregation round (`install` publishes a
    round, `conclude` records a closed one's new model: the loop's own transitions)."""

    def __init__(
        self,
        state: FederationState,
        strategy: Strategy,
        stage_news: News,
        *,
        install: Install,
        conclude: Conclude,
    ) -> None:
        self.state = state
        self.strategy = strategy
        self.stage_news = stage_news
        self.install = install
        self.conclude = conclude

    def first_stage(self) -> SecAggRound | None:
        """Return a new attempt's first stage (None when the run has no secure aggregation)."""
        options = self.state.config.secagg
        if not options.enabled:
            return None
        return SecAggRound(deadline=time.monotonic() + options.stage_timeout_s)

    def step(
        self, current: RoundState, secagg: SecAggRound, now: float, *, skip: bool
    ) -> tuple[Callable[[], None] | None, bool]:
        """Advance a stage, or return the close or the retry to run; and whether it decided.

        Called holding the condition; waits on it when nothing is due. `skip` (an operator
        asked to skip the round) ends the current stage now.
        """
        config = self.state.config
        decision, reason = stage_decision(
            secagg,
            selected=len(current.selected),
            min_fit_clients=config.min_fit_clients,
            close_at_threshold=config.close_at_threshold,
            deadline_passed=now >= secagg.deadline or skip,
        )
        if decision == "advance":
            advance_stage(secagg, config, current.server_round, current.attempt)
            log.info(
                "round %d attempt %d: secure aggregation stage %s",
                current.server_round,
                current.attempt,
                secagg.stage,
            )
            self.stage_news.announce()
            return None, True
        if decision == "close":
            current.phase = "aggregating"
            return self.close, True
        if decision == "retry":
            return functools.partial(self.retry, reason), True
        self.state.changed.wait(timeout=max(secagg.deadline - now, 0.0))
        return None, False

    def retry(self, reason: str) -> None:
        """Start the round again from its keys, as a new attempt; the old one's sum is dropped."""
        with self.state.lock:
            current = self.state.round
            invited = set(current.selected) | set(self.state.active_clients(time.monotonic()))
            retried = current.next_attempt(frozenset(invited), keep_updates=False)
            retried.secagg = self.first_stage()
            weights = self.state.global_weights
        log.warning(
            "round %d attempt %d: %s; retrying from the keys as attempt %d with %d clients",
            retried.server_round,
            current.attempt,
            reason,
            retried.attempt,
            len(invited),
        )
        self.install(retried, weights)

    def close(self) -> None:
        """Rebuild the round's sum from the masked sum and the revealed shares, and go on."""
        with self.state.lock:
            current = self.state.round
            records = list(current.received.values())
            weights = self.state.global_weights
        assert current.secagg is not None
        started = time.perf_counter()
        exchanged = {name: weights[name] for name in self.state.spec}
        try:
            summed = summed_deltas(
                current.secagg,
                self.state.config,
                self.state.spec,
                self.state.group_specs,
                server_round=current.server_round,
                attempt=current.attempt,
            )
        except SecAggError as exc:
            log.error("round %d attempt %d: %s", current.server_round, current.attempt, exc)
            self.retry(f"the sum could not be rebuilt ({exc})")
            return
        aggregated = self.strategy.aggregate_sum(current.server_round, exchanged, summed)
        survivors = set(current.secagg.survivors)
        records = [r for r in records if r.client_id in survivors]
        self.conclude(current, records, {**weights, **aggregated}, time.perf_counter() - started)
