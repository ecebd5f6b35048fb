"""The FastAPI application: `create_app(settings)` builds it; the lifespan runs the federation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from aggregator_service.api.auth import Access
from aggregator_service.api.errors import add_error_handlers
from aggregator_service.api.limits import LongPollGate, RateLimiter, UploadGate
from aggregator_service.api.routes import admin, dashboard, events, inspect, model, secagg, updates
from aggregator_service.api.watch import ModelWatch
from aggregator_service.federation.federation import Federation
from aggregator_service.federation.publish import PublishedModel
from aggregator_service.federation.rounds import Evaluator
from aggregator_service.settings import AggregatorSettings
from shared.config import ExperimentConfig, load_config
from shared.schemas import ErrorBody

__all__ = ["build_federation", "create_app"]

log = logging.getLogger(__name__)


def build_federation(
    settings: AggregatorSettings,
    config: ExperimentConfig,
    *,
    evaluator: Evaluator | None = None,
    on_finished: Callable[[], None] = lambda: None,
) -> Federation:
    """Open the state dir and build (or resume) the federation; raise if it cannot start.

    `evaluator` defaults to evaluating on the dataset's test split when the config asks
    for server-side evaluation.
    """
    if evaluator is None and config.server_eval:
        evaluator = _default_evaluator(config, settings.eval_device)
    return Federation(settings, config, evaluator=evaluator, on_finished=on_finished)


def create_app(
    settings: AggregatorSettings,
    config: ExperimentConfig | None = None,
    *,
    evaluator: Evaluator | None = None,
    on_finished: Callable[[], None] = lambda: None,
    federation: Federation | None = None,
) -> FastAPI:
    """Build the aggregator app; the federation starts and stops with the app's lifespan.

    `config` defaults to the YAML at settings.config. The tokens are loaded here, so a bad
    tokens file fails at once. `federation`, when given, is one already built by
    `build_federation` (then `evaluator` and `on_finished` are its own); otherwise the
    lifespan builds it.
    """
    experiment = config if config is not None else load_config(settings.config)
    access = Access.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = federation
        if running is None:
            running = await run_in_threadpool(
                build_federation,
                settings,
                experiment,
                evaluator=evaluator,
                on_finished=on_finished,
            )
        _log_access(access, settings)
        loop = asyncio.get_running_loop()
        watch = ModelWatch(loop)
        stage_watch = ModelWatch(loop)  # secure aggregation's stages and attempts
        board_watch = ModelWatch(loop)  # the dashboard's event streams
        upload_gate = UploadGate(
            slots=settings.max_concurrent_uploads,
            max_waiting=settings.max_queued_uploads,
            queue_timeout_s=settings.upload_queue_timeout_s,
        )

        def published(model: PublishedModel) -> None:  # on the round loop's thread
            watch.notify()
            stage_watch.notify()
            board_watch.notify()
            training = model.phase == "training"
            upload_gate.prepare(len(model.payload) if training else None, loop)

        running.publications.subscribe(published)
        running.stage_news.subscribe(stage_watch.notify)
        running.state.news.subscribe(board_watch.notify)
        app.state.federation = running
        app.state.watch = watch
        app.state.stage_watch = stage_watch
        app.state.board_watch = board_watch
        app.state.upload_gate = upload_gate
        app.state.long_poll_gate = LongPollGate(limit=settings.max_long_polls)
        app.state.receive_limiter = RateLimiter(
            rate=settings.receive_rate, burst=settings.receive_burst
        )
        running.start()
        try:
            yield
        finally:
            await run_in_threadpool(running.close)

    app = FastAPI(
        title="Tributary aggregator",
        summary="Federated averaging over HTTP: workers fetch the global model and post updates.",
        version="0.1.0",
        lifespan=lifespan,
        responses={
            400: {"model": ErrorBody, "description": "Malformed request"},
            422: {"model": ErrorBody, "description": "Invalid request or update"},
        },
    )
    app.state.settings = settings
    app.state.access = access
    add_error_handlers(app)
    routers = (model, updates, secagg, inspect, events, dashboard, admin)
    for module in routers:
        app.include_router(module.router)
    return app


def _log_access(access: Access, settings: AggregatorSettings) -> None:
    if not access.clients_enabled:
        log.warning(
            "no tokens file: the aggregator accepts ANY client (local demo mode); "
            "set --tokens-file to require tokens (docs/security.md)"
        )
    else:
        log.info("client authentication on: %d client tokens", access.num_clients)
        if not settings.tls:
            log.warning(
                "bearer tokens travel over plain HTTP; serve HTTPS (--ssl-certfile, "
                "--ssl-keyfile) or put a TLS proxy in front"
            )
    if not access.admin_enabled:
        log.info("no admin token: the /admin endpoints are disabled")


def _default_evaluator(config: ExperimentConfig, device: str) -> Evaluator:
    from aggregator_service.federation.evaluation import (
        ServerEvaluator,  # torch and the dataset: only here
    )

    return ServerEvaluator(config, device)
