"""The worker loop: register, long-poll for rounds, train when selected, post, repeat.

One worker is one federated client. It loads the dataset, keeps its own partition
(computed locally from its partition_id: `client_worker.local_data`), registers with the
aggregator and then polls GET /get_weights with min_round = last handled round + 1 and its
last ETag, so the server does the waiting. When a round is training and this client is
selected, it trains the received global model on its partition and posts the result. It
ends when the server says "finished", when `max_rounds` rounds are trained (bounded mode)
or on a stop request. Several virtual clients can share one process and one loaded
dataset, one thread each (`client_worker.virtual`), one download of each global model
(`client_worker.feed`) and a pool of model modules (`client_worker.local_model`); with
`train_slots` at most that many of them train at the same time (`client_worker.parts`
says what a client shares and what it has of its own).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import torch

from client_worker.algorithms import RoundContext
from client_worker.algorithms.local_round import LocalUpdate, train_round
from client_worker.attack import attacked_update, describe_attack
from client_worker.compress import UpdateEncoder
from client_worker.device import GpuGate, free_device_memory
from client_worker.errors import StopRequested, UpdateRejected
from client_worker.feed import ModelFeed
from client_worker.local_model import ModelPool
from client_worker.network import Sleep, event_sleep
from client_worker.parts import OwnParts, SharedParts
from client_worker.secagg_part import SecAggPart, update_delta
from client_worker.secagg_session import SecAggSession
from client_worker.settings import WorkerSettings
from client_worker.slots import TrainingSlots
from client_worker.summary import Activity, WorkerSummary
from client_worker.timeline import Timeline, TimelineFile
from client_worker.train import TrainConfig, TrainingInterrupted, derive_seed
from client_worker.transport import WeightsReply
from shared.config import ExperimentConfig
from shared.data import Dataset, dataset_from_config
from shared.errors import ConfigError

if TYPE_CHECKING:  # Opacus takes seconds to import: only workers given DP-SGD load it
    from client_worker.dp_accountant import PrivacyLedger
    from client_worker.dp_sgd import DpSgd

__all__ = ["run_worker"]

_log = logging.getLogger(__name__)

NO_ETAG_PAUSE_S = 1.0  # pause between polls when the server sends no ETag to wait on


def run_worker(
    settings: WorkerSettings,
    config: ExperimentConfig,
    *,
    stop: threading.Event | None = None,
    dataset: Dataset | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Sleep | None = None,
    activity: Activity | None = None,
    slots: TrainingSlots | None = None,
    feed: ModelFeed | None = None,
    models: ModelPool | None = None,
    gate: GpuGate | None = None,
    timeline: TimelineFile | None = None,
) -> WorkerSummary:
    """Run one client until the federation finishes, max_rounds are trained, or `stop`.

    `dataset` skips loading (virtual clients share one); `transport` and `sleep` are for
    tests (an `httpx.MockTransport`, a sleep that only records); `activity` tells a caller
    whether a stop must wait for a round in progress; `slots` (shared by virtual clients,
    default: the settings' train_slots) bounds the trainings at once; `feed` (shared by
    virtual clients) downloads each global model once for all of them; `models` (shared by
    virtual clients, default: one module of its own) lends the module to train; `gate`
    (shared by virtual clients, default: from the settings) says on which device they train
    and how they share a GPU; `timeline` (shared by virtual clients, default: the settings'
    timeline_path) records the client's phases. Server errors that a retry cannot heal propagate as
    `FatalServerError`; a training that runs out of GPU memory only skips that round.
    """
    config = settings.experiment_for_worker(config)
    if dataset is None:
        dataset = dataset_from_config(config)
    stop = stop if stop is not None else threading.Event()
    shared = SharedParts.complete(
        settings,
        dataset,
        activity=activity,
        slots=slots,
        feed=feed,
        models=models,
        gate=gate,
        timeline=timeline,
    )
    sleep = sleep if sleep is not None else event_sleep(stop)
    own = OwnParts.build(
        settings, config, dataset, shared.models, stop=stop, transport=transport, sleep=sleep
    )
    return _Worker(settings, config, stop, sleep, shared, own).run()


class _Worker:
    """One client's loop, and its state across rounds."""

    def __init__(
        self,
        settings: WorkerSettings,
        config: ExperimentConfig,
        stop: threading.Event,
        sleep: Sleep,
        shared: SharedParts,
        own: OwnParts,
    ) -> None:
        self.settings = settings
        self.config = config
        self.stop = stop
        self.sleep = sleep
        self.client_id = settings.client_id
        self.partition_id = settings.resolved_partition_id()
        self.data, self.network, self.attack = own.data, own.network, own.attack
        self.client, self.model, self.algorithms = own.client, own.model, own.algorithms
        self.encoder = UpdateEncoder(self.client_id, settings.state_dir)
        self.summary = WorkerSummary(self.client_id, self.partition_id, len(self.data.labels))
        self.last_done = 0  # the last round trained, skipped, crashed or rejected
        self.etag: str | None = None
        self.activity = shared.activity
        self.slots = shared.slots
        self.feed = shared.feed
        self.gate = shared.gate
        self.secagg = SecAggPart(
            self.client, self.client_id, wait_s=settings.long_poll_wait_s, stop=stop
        )
        self.ledger: PrivacyLedger | None = None  # DP-SGD's accountant, loaded when first needed
        self.timeline = Timeline(self.client_id, shared.timeline)
        shared.activity.track(self.summary)

    # ---------------------------------------------------------------- loop

    def run(self) -> WorkerSummary:
        """Register and serve rounds until finished, bounded, or stopped."""
        self._log(
            "partition %d: %d examples; %s",
            self.partition_id,
            len(self.data.labels),
            self.network.describe(),
        )
        if self.attack is not None:
            self._log("%s", describe_attack(self.attack))
        try:
            with self.client:
                answer = self.client.register(len(self.data.labels))
                self._log(
                    "registered (server round %s, phase %s)",
                    answer.get("round"),
                    answer.get("phase"),
                )
                while self.summary.outcome == "running":
                    self._step()
        except StopRequested:
            self.summary.outcome = "stopped"
        finally:
            self._count_bytes()
            self.timeline.close()
        _log.info("%s", self.summary.line())
        return self.summary

    def _count_bytes(self) -> None:
        self.summary.bytes_up = self.client.bytes_up
        self.summary.bytes_down = self.client.bytes_down

    def _step(self) -> None:
        """Poll once and act on the answer; set the outcome when the worker should end."""
        self._count_bytes()
        if self.stop.is_set():
            self.summary.outcome = "stopped"
            return
        wait = self.settings.long_poll_wait_s
        self.timeline.polling(self.summary.last_round)
        if self.feed is not None:
            reply = self.feed.get_weights(
                self.client, self.last_done + 1, self.etag, wait, self.stop
            )
        else:
            reply = self.client.get_weights(self.last_done + 1, self.etag, wait)
        if reply is None:
            return  # 304: nothing changed while the server held the request
        self.etag = reply.etag
        self.summary.last_round = reply.server_round
        taking_part = (
            reply.phase == "training"
            and reply.is_selected
            and reply.server_round > self.last_done
            and self.secagg.untried(reply)
        )
        self.timeline.seen(reply.server_round, taking_part=taking_part)
        if reply.phase == "finished":
            self.summary.outcome = "finished"
        elif taking_part:
            with self.activity.busy():
                self._take_part(reply)
            if not self.secagg.applies(reply):  # a secagg round may be retried: see SecAggPart
                self.last_done = reply.server_round
            max_rounds = self.settings.max_rounds
            if max_rounds is not None and self.summary.rounds_trained >= max_rounds:
                self.summary.outcome = "max_rounds"
        elif reply.etag is None:
            # Without an ETag the server cannot hold the next poll: pause, do not spin.
            self.sleep(NO_ETAG_PAUSE_S)

    def _take_part(self, reply: WeightsReply) -> None:
        """Train on the selected round and post the update, unless simulated away."""
        server_round = reply.server_round
        if len(self.data.labels) == 0:
            self._skip(server_round, "the partition is empty")
            return
        if self.network.drops_round(server_round):
            self._skip(server_round, "simulated dropout")
            return
        try:
            train_config = TrainConfig.from_round_config(reply.config)
        except ValueError as exc:
            raise ConfigError(f"round {server_round}: unusable training config: {exc}") from None
        dp = _round_dp_sgd(reply.config)
        if dp is not None:
            reason = self._privacy_ledger().declines(dp, len(self.data.labels), train_config)
            if reason is not None:
                self._budget_spent(server_round, reason)
                return
        algorithm = self.algorithms.for_round(reply.config)
        batches = math.ceil(len(self.data.labels) / train_config.batch_size)
        crash_at = self.network.crash_point(server_round, batches * train_config.local_epochs)
        experiment_seed = int(reply.config.get("seed", self.config.seed))
        seed = derive_seed(experiment_seed, self.partition_id, server_round)
        if dp is not None:  # batches and noise the aggregator cannot regenerate
            seed = self._privacy_ledger().training_seed(seed)
        session = self.secagg.join(reply) if self.secagg.applies(reply) else None
        if self.secagg.applies(reply) and session is None:
            return
        accepted = out_of_memory = False
        try:
            with self.model.loaded(reply, self.stop) as model:  # held until the update is posted
                context = RoundContext(
                    server_round, reply.config, self.model.global_weights, reply.groups()
                )
                work = functools.partial(
                    train_round,
                    model,
                    algorithm,
                    context,
                    self.data.images,
                    self.data.labels,
                    train_config,
                    seed=seed,
                    stop=self.stop,
                    max_batches=crash_at,
                    plan=self.gate.plan,
                    local_test=self.data.local_test,
                    dp=dp,
                )
                work = functools.partial(self.timeline.training, server_round, work)
                # The waits for a slot and for the GPU are not in train_seconds.
                update = self.slots.run(functools.partial(self.gate.run, work), self.stop)
                self.network.slow_down(update.result.train_seconds)  # a slower device's extra
                if self.stop.is_set():  # stopped while slowed down: abandoned as in training
                    raise TrainingInterrupted(batches * train_config.local_epochs)
                update = attacked_update(
                    self.attack,
                    update,
                    context,
                    seed=experiment_seed,
                    client_index=self.partition_id,
                )
                if dp is not None:  # counted before it leaves, whether accepted or not
                    spent = self._privacy_ledger().spend(dp, update.result, train_config.batch_size)
                    update = dataclasses.replace(update, privacy=spent)
                self.timeline.enter("uploading", server_round)  # encoding included
                if session is None:
                    encoded = self.encoder.encode(
                        reply.config,
                        update.weights,
                        self.model.global_weights,
                        seed=experiment_seed,
                        server_round=server_round,
                        client_index=self.partition_id,
                    )
                    accepted = self._post(
                        server_round, update, train_config.local_epochs, encoded=encoded
                    )
                else:  # the trained weights are released before waiting for the others
                    delta = update_delta(update.weights, self.model.global_weights, update.groups)
            if session is not None:
                masking = (session, delta, derive_seed(seed, session.attempt))
                accepted = self._post(
                    server_round, update, train_config.local_epochs, masking=masking
                )
        except TrainingInterrupted as exc:
            self._interrupted(server_round, exc)
        except torch.cuda.OutOfMemoryError as exc:
            out_of_memory = True
            self._out_of_memory(server_round, exc)
        finally:  # the algorithm's state and residuals count only with an accepted update
            self.timeline.round_over(server_round)
            if accepted:
                self.algorithms.commit()
                self.encoder.commit()
            else:
                self.algorithms.discard()
                self.encoder.discard()
        if out_of_memory:  # the exception and the frames holding its tensors are gone
            free_device_memory(self.gate.plan.device)

    def _privacy_ledger(self) -> PrivacyLedger:
        """Return this client's DP-SGD accountant, read from its state dir the first time."""
        if self.ledger is None:
            from client_worker.dp_accountant import PrivacyLedger

            self.ledger = PrivacyLedger(self.algorithms.store)
        return self.ledger

    def _budget_spent(self, server_round: int, reason: str) -> None:
        self.summary.outcome = "budget_spent"
        self._log(
            "round %d: privacy budget spent, the client stops contributing: %s",
            server_round,
            reason,
        )

    def _post(
        self,
        server_round: int,
        update: LocalUpdate,
        local_epochs: int,
        *,
        encoded: dict[str, Any] | None = None,
        masking: tuple[SecAggSession, np.ndarray, int] | None = None,
    ) -> bool:
        """Post the update (`encoded`: as deltas), or mask and post its delta; tell if taken."""
        result, measured = update.result, update.metrics()
        # The aggregator refuses non-finite metrics (a diverged loss); leave them out.
        metrics = {name: value for name, value in measured.items() if math.isfinite(value)}
        if len(metrics) < len(measured):
            self._log("round %d: non-finite metrics left out: %s", server_round, measured)
        try:
            if masking is not None:
                session, delta, seed = masking
                masked = self.secagg.deliver(session, delta, result.num_examples, metrics, seed)
                if masked is None:
                    raise UpdateRejected("secagg", server_round, "the masked update was refused")
                answer = masked
            else:
                answer = self.client.post_update(
                    server_round,
                    result.num_examples,
                    update.weights if encoded is None else encoded,
                    metrics,
                    update.groups,
                    delta=encoded is not None,
                )
        except UpdateRejected as exc:
            self.summary.rounds_rejected += 1
            self._log("round %d: update dropped: %s", server_round, exc)
            return False
        self.summary.rounds_trained += 1
        self.summary.examples_trained += result.num_examples * local_epochs
        self.summary.train_seconds += result.train_seconds
        self._log(
            "round %d: trained %d examples in %.2f s (%.2f s CPU), loss %.4f; posted (%s%s)",
            server_round,
            result.num_examples,
            result.train_seconds,
            result.train_cpu_seconds,
            result.train_loss,
            "masked" if masking else f"{answer.get('received')}/{answer.get('needed')} received",
            ", duplicate" if answer.get("duplicate") else "",
        )
        return True

    def _interrupted(self, server_round: int, exc: TrainingInterrupted) -> None:
        self.timeline.close()  # the training ends here; a crash's time away is no phase
        if self.stop.is_set():
            self._log(
                "round %d: stop requested, training abandoned after %d batches",
                server_round,
                exc.batches_done,
            )
            self.summary.outcome = "stopped"
            return
        self.summary.rounds_crashed += 1
        delay = self.network.rejoin_delay_s(server_round)
        self._log(
            "round %d: simulated crash after %d batches; rejoining in %.1f s",
            server_round,
            exc.batches_done,
            delay,
        )
        self.network.rejoin(server_round)

    def _out_of_memory(self, server_round: int, exc: BaseException) -> None:
        self.summary.rounds_failed += 1
        _log.error(
            "client %s: round %d: out of memory on %s while training; the client skips the "
            "round (fewer virtual clients per GPU, --gpu-sharing sequential, a smaller batch "
            "or --precision bf16 use less): %s",
            self.client_id,
            server_round,
            self.gate.plan.device,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )

    def _skip(self, server_round: int, reason: str) -> None:
        self.summary.rounds_skipped += 1
        self._log("round %d: selected but skipped (%s)", server_round, reason)

    def _log(self, message: str, *args: object) -> None:
        _log.info("client %s: " + message, self.client_id, *args)


def _round_dp_sgd(config: Mapping[str, Any]) -> DpSgd | None:
    """Return the round's DP-SGD settings (None without "dp_sgd"), importing Opacus then."""
    if config.get("dp_sgd") is None:
        return None
    from client_worker.dp_sgd import DpSgd

    return DpSgd.from_round_config(config)
