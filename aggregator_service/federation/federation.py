"""Assembles a federation from settings: store, model, state, strategy, round loop; resumes runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator_service.federation.deltas import check_deltas
from aggregator_service.federation.downlink import DownloadChain
from aggregator_service.federation.ingest import decode_update
from aggregator_service.federation.news import News
from aggregator_service.federation.privacy import BUDGET_REASON, RunPrivacy
from aggregator_service.federation.publish import Publications, publish_round
from aggregator_service.federation.rounds import Evaluator, RoundLoop
from aggregator_service.federation.secagg_desk import SecAggDesk
from aggregator_service.federation.secagg_round import SecAggRound
from aggregator_service.federation.state import (
    ClientInfo,
    FederationState,
    RoundState,
    UpdateRecord,
)
from aggregator_service.settings import AggregatorSettings
from aggregator_service.store.run_store import RunStore, StoreError, split_server_state
from aggregator_service.strategy import STRATEGIES, DPFedAvg, Strategy, build_strategy
from aggregator_service.strategy.base import BaseStrategy
from shared.config import ExperimentConfig
from shared.errors import ConfigError
from shared.exchange import exchanged_names
from shared.models import batch_norm_layers, build_model, init_global_weights, model_spec
from shared.schemas import Phase
from shared.wire import spec_of

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Federation"]

log = logging.getLogger(__name__)


class Federation:
    """Everything one aggregator run holds, built and resumed from the state dir."""

    def __init__(
        self,
        settings: AggregatorSettings,
        config: ExperimentConfig,
        *,
        evaluator: Evaluator | None = None,
        on_finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.strategy: Strategy = build_strategy(config.strategy)
        _check_runs_on_sums(config, self.strategy)
        self.store = RunStore(settings.state_dir, keep=_checkpoints_kept(config))
        self.publications = Publications()
        self.stage_news = News()  # secure aggregation's stage changes
        self.exchanged: list[str] = []  # the tensors updates carry (not the clients' own)
        done_rounds, weights = self._load_or_init_model()
        self.state = self._build_state(done_rounds, weights)
        section = config.download_compression
        self.downlink = DownloadChain(section, config.seed) if section is not None else None
        self.loop = RoundLoop(
            state=self.state,
            strategy=self.strategy,
            store=self.store,
            publications=self.publications,
            evaluator=evaluator,
            on_finished=on_finished,
            stage_news=self.stage_news,
            privacy=self._run_privacy(),
            downlink=self.downlink,
        )
        self.secagg = SecAggDesk(self.state)
        if self.loop.asynchronous is not None and self.state.book is not None:
            self.state.book.load_meta(self.store.get_meta("async_book"))
            self.loop.asynchronous.versions.load(self.store, done_rounds, self.state.spec)
        self._resume_round()
        if self.downlink is not None:
            self.downlink.note(self.state.published)
            self.publications.subscribe(self.downlink.note)

    def start(self) -> None:
        """Start the round loop."""
        self.loop.start()

    def close(self) -> None:
        """Stop the round loop and close the store."""
        self.loop.stop()
        self.store.close()

    def _load_or_init_model(self) -> tuple[int, dict[str, np.ndarray]]:
        config = self.config
        model = build_model(config.model, **config.model_args())
        _check_dp_sgd_model(config, model)
        expected = model_spec(model)
        self.exchanged = exchanged_names(
            model, local_layers=config.local_layers, fedbn=config.fedbn, trainable=config.trainable
        )
        checkpoint = self.store.latest_checkpoint()
        if checkpoint is None and _has_run(self.store):
            raise StoreError(
                f"the state directory {self.settings.state_dir} holds a run but none of its "
                "checkpoints is intact; refusing to start over from a fresh model. Restore "
                "the checkpoints/ directory from a backup, or use an empty --state-dir"
            )
        if checkpoint is None:
            weights = init_global_weights(
                config.model, seed=config.seed, **config.model_args(), **config.model_init_args()
            )
            self.store.save_checkpoint(0, weights, self.strategy.state())
            return 0, weights
        done_rounds, tensors = checkpoint
        weights, server_state = split_server_state(tensors)
        self.strategy.load_state(server_state)
        if spec_of(weights) != expected:
            raise ConfigError(
                f"the checkpoint in {self.settings.state_dir} is not a {config.model!r} model for "
                f"{config.dataset!r}; use another --state-dir or the config it was made with"
            )
        log.info("resuming from the checkpoint of round %d", done_rounds)
        return done_rounds, weights

    def _build_state(self, done_rounds: int, weights: dict[str, np.ndarray]) -> FederationState:
        config = self.config
        stopped = self.store.get_meta("stopped") is not None  # finished early by the admin
        finished = stopped or done_rounds >= config.num_rounds
        server_round = done_rounds if stopped else min(done_rounds + 1, config.num_rounds)
        phase: Phase = "finished" if finished else "waiting"
        round_state = RoundState(server_round, phase)
        spec = spec_of({name: weights[name] for name in self.exchanged})
        published = publish_round(config, self.strategy, round_state, weights, spec)
        state = FederationState(
            config=config,
            spec=spec,
            group_specs=self.strategy.update_groups(spec),
            global_weights=weights,
            round_state=round_state,
            published=published,
            client_timeout_s=self.settings.client_timeout_s,
        )
        self.store.drop_history_after(done_rounds)  # rounds whose checkpoint was lost
        self.store.updates.drop_through(done_rounds)  # a crash right after a checkpoint
        state.history = self.store.history()
        now = time.monotonic()
        for client_id, meta in dict(self.store.get_meta("clients", {})).items():
            state.clients[client_id] = ClientInfo(
                meta.get("num_examples"), meta["registered_at"], now
            )
        return state

    def _run_privacy(self) -> RunPrivacy | None:
        """Return DP-FedAvg's accountant, its ledger rebuilt from the history, or None."""
        privacy = RunPrivacy.of(self.config, self.state.history)
        if privacy is None:
            return None
        stopped = self.store.get_meta("stopped")
        if isinstance(stopped, dict) and stopped.get("reason") == BUDGET_REASON:
            privacy.budget_stop = stopped
        clip_norm = self.strategy.clip_norm if isinstance(self.strategy, DPFedAvg) else None
        self.state.privacy = privacy.status(clip_norm)
        if isinstance(self.strategy, DPFedAvg) and self.strategy.noise_seed is not None:
            log.warning(
                "dpfedavg: noise_seed is set, so the noise can be recomputed from the config: "
                "the reported epsilon holds only while the seed stays secret (docs/privacy.md)"
            )
        return privacy

    def _resume_round(self) -> None:
        """Re-open an interrupted round with its selection and its acknowledged updates."""
        state = self.state
        saved: dict[str, Any] | None = self.store.get_meta("round_state")
        current = state.round
        if current.phase != "waiting" or not saved or saved["round"] != current.server_round:
            return
        resumed = RoundState(
            current.server_round,
            "training",
            attempt=saved["attempt"],
            selected=frozenset(saved["selected"]),
            drawn_from=saved.get("drawn_from"),  # absent: accounted as a round without sampling
            deadline=time.monotonic() + self.config.round_timeout_s,
        )
        if state.book is not None:  # async: who trains comes from the book, no deadline
            resumed.selected = state.book.selected_in(current.server_round)
            resumed.deadline = float("inf")
        if self.config.secagg.enabled:
            self._restart_secagg_round(resumed, saved)
            return
        for client_id, num_examples, body in self.store.updates.pending(current.server_round):
            header, raw_weights = decode_update(body)
            update_round = header.round if state.book is not None else None
            # a delta update counts as plain tensors would in raw_bytes_in, as before the restart
            raw_nbytes = len(body) + check_deltas(raw_weights, state.spec) if header.delta else None
            resumed.received[client_id] = UpdateRecord(
                client_id,
                num_examples,
                dict(header.metrics),
                len(body),
                raw_nbytes,
                update_round=update_round,
            )
            if state.book is not None:
                state.book.accept(client_id, header.round)
        state.round = resumed
        state.published = publish_round(
            self.config, self.strategy, resumed, state.global_weights, state.spec
        )
        log.info(
            "round %d resumed with %d acknowledged updates",
            resumed.server_round,
            len(resumed.received),
        )

    def _restart_secagg_round(self, resumed: RoundState, saved: dict[str, Any]) -> None:
        """Re-open an interrupted secure-aggregation round as a new attempt, from its keys.

        The clients' keys and the masked sum lived in memory only: what the old attempt
        gathered is gone, and its clients' messages are refused as stale.
        """
        resumed.attempt += 1
        resumed.secagg = SecAggRound(deadline=time.monotonic() + self.config.secagg.stage_timeout_s)
        self.store.set_meta("round_state", {**saved, "attempt": resumed.attempt})
        self.store.updates.drop(resumed.server_round)
        self.state.round = resumed
        self.state.published = publish_round(
            self.config, self.strategy, resumed, self.state.global_weights, self.state.spec
        )
        log.info(
            "round %d restarts from key advertisement as attempt %d (secure aggregation)",
            resumed.server_round,
            resumed.attempt,
        )

    def remember_client(self, client_id: str, num_examples: int | None) -> None:
        """Persist the registered clients so a restarted aggregator knows them."""
        with self.state.lock:
            clients = {
                cid: {"num_examples": info.num_examples, "registered_at": info.registered_at}
                for cid, info in self.state.clients.items()
            }
        clients.setdefault(client_id, {"num_examples": num_examples, "registered_at": time.time()})
        self.store.set_meta("clients", clients)


def _checkpoints_kept(config: ExperimentConfig) -> int:
    """Return how many checkpoints to keep: async mode's stale updates need their bases."""
    return max(3, config.asynchronous.max_staleness + 2) if config.mode == "async" else 3


def _check_runs_on_sums(config: ExperimentConfig, strategy: Strategy) -> None:
    """Refuse secure aggregation with a strategy that has no rule for a round's sum."""
    if not config.secagg.enabled or _runs_on_sums(type(strategy)):
        return
    able = ", ".join(sorted(name for name, cls in STRATEGIES.items() if _runs_on_sums(cls)))
    raise ConfigError(
        f"strategy {strategy.name!r} needs each client's update, but under secure aggregation "
        f"(secagg.enabled) the aggregator learns only the round's sum; strategies that run "
        f"on the sum: {able}"
    )


def _runs_on_sums(cls: type[Strategy]) -> bool:
    """Whether a strategy class has its own aggregate_sum (BaseStrategy's refuses)."""
    own_rule: object = cls.aggregate_sum
    return own_rule is not BaseStrategy.aggregate_sum


def _has_run(store: RunStore) -> bool:
    """Tell whether the state dir already holds a run (checkpoint files or history)."""
    checkpoints = store.state_dir / "checkpoints"
    return any(checkpoints.glob("round-*")) or bool(store.history())  # temp files start "."


def _check_dp_sgd_model(config: ExperimentConfig, model: nn.Module) -> None:
    """Refuse to start DP-SGD on a model with BatchNorm: every client would refuse it."""
    norms = batch_norm_layers(model) if config.dp_sgd is not None else []
    if norms:
        raise ConfigError(
            f"dp_sgd cannot train model {config.model!r}: its BatchNorm layers "
            f"({', '.join(norms[:3])}{', ...' if len(norms) > 3 else ''}) normalize each "
            "example by its batch, so no per-example gradient exists to clip. Use a model "
            "without BatchNorm (mlp, mlp-128, cnn, simple-cnn) or one with GroupNorm or "
            "LayerNorm in its place"
        )
