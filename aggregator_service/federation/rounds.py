"""The round loop: one background thread that opens, closes, retries and finishes rounds.

It sleeps on the state's condition and is woken by what changes the answer: a
registration, a committed update, a round deadline (the wait's timeout), or stop().

When a round closes (`close_decision`):
1. every selected client has reported; or
2. `close_at_threshold` is set and `min_fit_clients` have reported; or
3. the round deadline passed and at least `min_fit_clients` have reported.
If the deadline passes with fewer, the round is *retried*, never aggregated from too few:
same round and global model, the updates already accepted are kept, every active client
is invited, and the deadline starts again. Updates still being ingested always finish
before a round closes.

A secure-aggregation round (`secagg.enabled`) goes through its stages instead, with its
own closes and retries (`secagg_steps.py`).

Two operator actions (POST /admin/...) are flags that the loop handles in its thread:
`request_skip` closes the open round now with the updates it has (even fewer than
`min_fit_clients`), or retries it when it has none; `request_stop` finishes the run now
with the last aggregated model, dropping the open round's updates.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np

from aggregator_service.federation.async_steps import AsyncSteps, buffered_updates
from aggregator_service.federation.downlink import DownloadChain
from aggregator_service.federation.history import brief, history_row
from aggregator_service.federation.ingest import round_updates
from aggregator_service.federation.news import News
from aggregator_service.federation.privacy import (
    BUDGET_REASON,
    BudgetCheck,
    RunPrivacy,
    round_sampling,
)
from aggregator_service.federation.publish import Publications, model_digest, publish_round
from aggregator_service.federation.secagg_steps import SecAggSteps
from aggregator_service.federation.selection import select_clients
from aggregator_service.federation.state import FederationState, RoundState, UpdateRecord
from aggregator_service.store.run_store import RunStore
from aggregator_service.strategy import ClientUpdate, DPFedAvg, Strategy
from shared.evaluation import EvalResult

__all__ = ["Evaluator", "RoundLoop", "close_decision"]

log = logging.getLogger(__name__)
Evaluator = Callable[[Mapping[str, np.ndarray]], EvalResult]
Decision = Literal["wait", "close", "retry"]


def close_decision(
    *,
    selected: int,
    received: int,
    in_flight: int,
    min_fit_clients: int,
    close_at_threshold: bool,
    deadline_passed: bool,
) -> Decision:
    """Decide whether a training round closes, is retried, or keeps waiting."""
    if in_flight:
        return "wait"
    if received >= selected:
        return "close"
    if close_at_threshold and received >= min_fit_clients:
        return "close"
    if deadline_passed:
        return "close" if received >= min_fit_clients else "retry"
    return "wait"


class RoundLoop:
    """Owns every round transition; runs in its own thread."""

    def __init__(
        self,
        *,
        state: FederationState,
        strategy: Strategy,
        store: RunStore,
        publications: Publications,
        evaluator: Evaluator | None = None,
        on_finished: Callable[[], None] = lambda: None,
        stage_news: News | None = None,
        privacy: RunPrivacy | None = None,
        downlink: DownloadChain | None = None,
    ) -> None:
        self.publications = publications
        self.downlink = downlink  # download compression: each new model joins the chain
        self.privacy = privacy  # DP-FedAvg's accountant: epsilon per round, the budget stop
        self.state = state
        self.strategy = strategy
        self.store = store
        self.evaluator = evaluator
        self.on_finished = on_finished
        self.error: str | None = None
        self._stopping = False
        self._stop_requested = False  # finish the run now (admin)
        self._skip_round: int | None = None  # close or retry this round now (admin)
        self.secagg = SecAggSteps(
            state,
            strategy,
            stage_news if stage_news is not None else News(),
            install=self._install_retry,
            conclude=self._conclude,
        )
        self.asynchronous = (
            AsyncSteps(state, install=self._install) if state.book is not None else None
        )
        self._thread = threading.Thread(target=self._run, name="round-loop", daemon=True)

    def start(self) -> None:
        """Start the loop thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to stop and wait for it."""
        with self.state.changed:
            self._stopping = True
            self.state.changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def request_stop(self) -> None:
        """Ask the loop to finish the run now with the last aggregated model."""
        with self.state.changed:
            self._stop_requested = True
            self.state.changed.notify_all()

    def request_skip(self) -> int | None:
        """Ask the loop to close (or, without updates, retry) the open round; return its number.

        Returns None, and asks nothing, when no round is training.
        """
        with self.state.changed:
            current = self.state.round
            if current.phase != "training" or self._stop_requested:
                return None
            self._skip_round = current.server_round
            self.state.changed.notify_all()
            return current.server_round

    def _run(self) -> None:
        try:
            while True:
                with self.state.changed:
                    step = self._next_step()
                if step is None:
                    return
                step()
        except Exception as exc:  # the service reports it on /healthz instead of dying silently
            log.exception("round loop stopped by an error")
            self.error = f"{type(exc).__name__}: {exc}"

    def _next_step(self) -> Callable[[], None] | None:
        """Wait (holding the condition) until there is something to do; return it."""
        config = self.state.config
        while not self._stopping:
            current = self.state.round
            now = time.monotonic()
            if self._stop_requested and current.phase != "finished":
                if current.in_flight:  # let updates being ingested finish first
                    self.state.changed.wait()
                    continue
                current.phase = "aggregating"  # no update is taken any more
                return self._stop_run
            if current.phase == "waiting":
                if len(self.state.clients) >= config.min_available_clients:
                    return self._open_round
                self.state.changed.wait()
                continue
            if current.phase != "training":
                self.state.changed.wait()
                continue
            if self._skip_round != current.server_round:
                self._skip_round = None  # asked for a round that has closed since
            if current.secagg is not None:
                skip = self._skip_round is not None
                step, decided = self.secagg.step(current, current.secagg, now, skip=skip)
                if decided:
                    self._skip_round = None
                if step is not None:
                    return step
                continue
            if self.asynchronous is not None:
                skip, self._skip_round = self._skip_round is not None, None
                buffered = self.asynchronous.step(current, now, skip=skip)
                if buffered == "close":
                    current.phase = "aggregating"
                    return self._close_round
                if buffered is not None:
                    return buffered
                self.state.changed.wait(timeout=self.asynchronous.wait_s(now))
                continue
            decision = close_decision(
                selected=len(current.selected),
                received=len(current.received),
                in_flight=len(current.in_flight),
                min_fit_clients=config.min_fit_clients,
                close_at_threshold=config.close_at_threshold,
                deadline_passed=now >= current.deadline,
            )
            if self._skip_round is not None and not current.in_flight:
                self._skip_round = None
                decision = "close" if current.received else "retry"
            if decision == "close":
                current.phase = "aggregating"
                return self._close_round
            if decision == "retry":
                return self._retry_round
            self.state.changed.wait(timeout=max(current.deadline - now, 0.0))
        return None

    # ------------------------------------------------------------------ transitions

    def _open_round(self, server_round: int | None = None) -> None:
        """Select clients for a round (default: the current one) and publish it."""
        config = self.state.config
        with self.state.lock:
            if server_round is None:
                server_round = self.state.round.server_round
            candidates = self.state.active_clients(time.monotonic())
            if len(candidates) < config.min_fit_clients:
                candidates = sorted(self.state.clients)
            weights = self.state.global_weights
            if self.asynchronous is not None:
                selected = sorted(self.asynchronous.select(server_round, time.monotonic()))
        if self.asynchronous is None:
            selected = select_clients(
                candidates,
                server_round=server_round,
                fraction_fit=config.fraction_fit,
                min_fit_clients=config.min_fit_clients,
                seed=config.seed,
            )
        opened = RoundState(
            server_round, "training", selected=frozenset(selected), drawn_from=len(candidates)
        )
        opened.secagg = self.secagg.first_stage()
        if self._stopped_by_budget(opened, weights):
            return
        self._install(opened, weights)
        log.info("round %d opened: %d clients selected", server_round, len(selected))

    def _retry_round(self) -> None:
        """Invite every active client to a round that missed its deadline with too few."""
        with self.state.lock:
            current = self.state.round
            invited = set(current.received) | set(self.state.active_clients(time.monotonic()))
            retried = current.next_attempt(frozenset(invited), keep_updates=True)
            weights = self.state.global_weights
        log.warning(
            "round %d: deadline passed with %d of %d updates; retrying with %d clients",
            retried.server_round,
            len(retried.received),
            self.state.config.min_fit_clients,
            len(invited),
        )
        if self._stopped_by_budget(retried, weights):
            return
        self._install(retried, weights)

    def _install_retry(self, retried: RoundState, weights: Mapping[str, np.ndarray]) -> None:
        """Publish a retried round, unless running it would exceed the privacy budget."""
        if not self._stopped_by_budget(retried, dict(weights)):
            self._install(retried, weights)

    def _close_round(self) -> None:
        """Aggregate the journalled updates in client-id order, evaluate, checkpoint, go on."""
        with self.state.lock:
            current = self.state.round
            records = list(current.received.values())
            weights = self.state.global_weights
        server_round = current.server_round
        read: set[str] = set()
        exchanged = {name: weights[name] for name in self.state.spec}  # not clients' own
        updates = _noting(self._updates(server_round, exchanged), read)
        started = time.perf_counter()
        new_weights = {**weights, **self.strategy.aggregate(server_round, exchanged, updates)}
        aggregate_s = time.perf_counter() - started
        if self.asynchronous is not None:  # a base later updates may have trained from
            new_version = {name: new_weights[name] for name in self.state.spec}
            self.asynchronous.versions.add(server_round, new_version)
        if self.downlink is not None:  # the model every worker will hold, bit for bit
            new_weights = self.downlink.chain(server_round, weights, new_weights)
        if lost := sorted({r.client_id for r in records} - read):  # damaged on disk since
            log.error("round %d: the journalled updates of %s were unreadable", server_round, lost)
            records = [r for r in records if r.client_id in read]
        self._conclude(current, records, new_weights, aggregate_s)

    def _updates(
        self, server_round: int, exchanged: dict[str, np.ndarray]
    ) -> Iterator[ClientUpdate]:
        """Return the closing round's updates: as journalled, or rebased (async mode)."""
        if self.asynchronous is None:
            return round_updates(self.store, server_round, exchanged)
        section = self.state.config.asynchronous
        versions = self.asynchronous.versions
        return buffered_updates(self.store, server_round, exchanged, versions, section)

    def _conclude(
        self,
        current: RoundState,
        records: list[UpdateRecord],
        new_weights: dict[str, np.ndarray],
        aggregate_s: float,
    ) -> None:
        """Evaluate, record and checkpoint a closed round's new model, then go on."""
        server_round = current.server_round
        evaluation = self.evaluator(new_weights) if self.evaluator is not None else None
        row = history_row(current, records, evaluation, model_sha256=model_digest(new_weights))
        if self.state.book is not None:
            with self.state.lock:
                row["stale_refused"] = self.state.book.stale_refused
                self.state.book.stale_refused = 0
                book = self.state.book.to_meta()
            self.store.set_meta("async_book", book)  # before the checkpoint, as the row
        row["aggregate_s"] = round(aggregate_s, 4)
        if self.privacy is not None:
            row |= self.privacy.close_round(current)
        # History first: a row without its checkpoint is dropped again on restart.
        self.store.append_history(row)
        self.store.save_checkpoint(server_round, new_weights, self.strategy.state())
        self.store.updates.drop(server_round)
        with self.state.lock:
            self.state.global_weights = new_weights
            self.state.history = [
                *(r for r in self.state.history if r["round"] != server_round),
                row,
            ]
        self._show_privacy()
        log.info("round %d closed: %s", server_round, brief(row))
        if server_round >= self.state.config.num_rounds:
            self._finish(server_round, new_weights)
            return
        self._advance(server_round + 1, new_weights)

    def _advance(self, server_round: int, weights: dict[str, np.ndarray]) -> None:
        """Move to the next round: open it now, or wait for enough clients."""
        with self.state.lock:
            enough = len(self.state.clients) >= self.state.config.min_available_clients
        if enough:
            self._open_round(server_round)
        else:
            self._install(RoundState(server_round, "waiting"), weights)

    def _stop_run(self) -> None:
        """Finish now: publish the last aggregated model as final; drop the open round."""
        with self.state.lock:
            current = self.state.round
            weights = self.state.global_weights
        done = current.server_round - 1  # the round whose result `weights` is
        self.store.updates.drop(current.server_round)
        self.store.set_meta("stopped", {"round": done, "at": time.time()})
        log.warning("run stopped by the admin after %d rounds", done)
        self._finish(done, weights)

    def _stopped_by_budget(self, round_state: RoundState, weights: dict[str, np.ndarray]) -> bool:
        """Finish the run instead of running `round_state` if it would exceed the budget."""
        if self.privacy is None:
            return False
        check = self.privacy.check(round_sampling(round_state))
        if not check.exceeded:
            return False
        done = round_state.server_round - 1
        self.store.updates.drop(round_state.server_round)  # a retried round's, unreleased
        self.privacy.budget_stop = _budget_meta(done, check)
        self.store.set_meta("stopped", self.privacy.budget_stop)
        log.warning("%s", check.message(done))
        self._show_privacy()
        self._finish(done, weights)
        return True

    def _show_privacy(self) -> None:
        """Put the accountant's figures, and the clip norm of the next round, on /status."""
        if self.privacy is None:
            return
        clip_norm = self.strategy.clip_norm if isinstance(self.strategy, DPFedAvg) else None
        shown = self.privacy.status(clip_norm)
        with self.state.lock:
            self.state.privacy = shown

    def _finish(self, server_round: int, weights: dict[str, np.ndarray]) -> None:
        self.store.set_meta("finished", True)
        self._install(RoundState(server_round, "finished"), weights)
        log.info("run finished after %d rounds", server_round)
        self.on_finished()

    def _install(self, round_state: RoundState, weights: Mapping[str, np.ndarray]) -> None:
        """Publish a round and its model together: no reader sees one without the other."""
        config = self.state.config
        if round_state.phase == "training" and self.state.book is not None:
            with self.state.lock:
                book = self.state.book.to_meta()
            self.store.set_meta("async_book", book)  # the slots given, for a restart
        elif round_state.phase == "training":
            round_state.deadline = time.monotonic() + config.round_timeout_s
        if round_state.phase == "training":
            self.store.set_meta(
                "round_state",
                {
                    "round": round_state.server_round,
                    "attempt": round_state.attempt,
                    "selected": sorted(round_state.selected),
                    "drawn_from": round_state.drawn_from,
                },
            )
        published = publish_round(config, self.strategy, round_state, weights, self.state.spec)
        with self.state.changed:
            self.state.round = round_state
            self.state.published = published
            self.state.changed.notify_all()
        self.publications.announce(published)


def _budget_meta(done: int, check: BudgetCheck) -> dict[str, Any]:
    """Return the `stopped` record of a run finished by its privacy budget."""
    return {
        "round": done,
        "at": time.time(),
        "reason": BUDGET_REASON,
        "epsilon": _finite(check.epsilon),
        "next_epsilon": _finite(check.next_epsilon),
        "target_epsilon": check.target_epsilon,
        "message": check.message(done),
    }


def _finite(value: float) -> float | None:
    """JSON has no infinity: an infinite epsilon is null."""
    return value if math.isfinite(value) else None


def _noting(updates: Iterator[ClientUpdate], read: set[str]) -> Iterator[ClientUpdate]:
    """Pass `updates` on, adding each one's client id to `read`."""
    for update in updates:
        read.add(update.client_id)
        yield update
