"""The FastAPI application: `create_app(settings)` builds it; the lifespan runs the federation."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from aggregator_service.api.auth import Access
from aggregator_service.api.limits import LongPollGate, RateLimiter, UploadGate
from aggregator_service.api.routes import admin, inspect, model, updates
from aggregator_service.api.watch import ModelWatch
from aggregator_service.federation.federation import Federation
from aggregator_service.federation.publish import PublishedModel
from aggregator_service.federation.rounds import Evaluator
from aggregator_service.federation.state import UpdateRejected
from aggregator_service.settings import AggregatorSettings
from aggregator_service.store.run_store import StoreError
from shared.config import ExperimentConfig, load_config
from shared.errors import MalformedMessage, ProtocolVersionError, TensorError
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
        evaluator = _default_evaluator(config)
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
        upload_gate = UploadGate(
            slots=settings.max_concurrent_uploads, max_waiting=settings.max_queued_uploads
        )

        def published(model: PublishedModel) -> None:  # on the round loop's thread
            watch.notify()
            training = model.phase == "training"
            upload_gate.prepare(len(model.payload) if training else None, loop)

        running.publications.subscribe(published)
        app.state.federation = running
        app.state.watch = watch
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
    _add_error_handlers(app)
    for router in (model.router, updates.router, inspect.router, admin.router):
        app.include_router(router)
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


def _default_evaluator(config: ExperimentConfig) -> Evaluator:
    from aggregator_service.federation.evaluation import (
        ServerEvaluator,  # torch and the dataset: only here
    )

    return ServerEvaluator(config)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UpdateRejected)
    async def rejected(request: Request, exc: UpdateRejected) -> JSONResponse:
        _count(request, exc.code)  # every refusal, wherever it was raised, counts here once
        headers = {"Retry-After": "1"} if exc.status == 503 else {}
        headers.update(exc.headers)
        body = {"error": exc.code, "detail": exc.detail, **exc.extra}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = exc.detail if exc.status_code in (404, 405) else "http_error"
        body = {"error": str(code).lower().replace(" ", "_"), "detail": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return _error(request, 422, "invalid_request", problems or "invalid request")

    @app.exception_handler(MalformedMessage)
    async def malformed(request: Request, exc: MalformedMessage) -> JSONResponse:
        return _error(request, 400, "malformed_message", str(exc))

    @app.exception_handler(ProtocolVersionError)
    async def protocol(request: Request, exc: ProtocolVersionError) -> JSONResponse:
        return _error(request, 400, "unsupported_protocol", str(exc))

    @app.exception_handler(TensorError)
    async def tensor(request: Request, exc: TensorError) -> JSONResponse:
        return _error(request, 422, "invalid_tensor", str(exc), tensor=exc.tensor)

    # State-dir failures name files in the log only; the client learns only that it failed.
    @app.exception_handler(StoreError)
    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.Error)
    async def store(request: Request, exc: Exception) -> JSONResponse:
        log.error("state dir problem on %s %s: %s", request.method, request.url.path, exc)
        return _error(
            request,
            503,
            "storage_unavailable",
            "the aggregator cannot persist state; retry later",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(request, 500, "internal_error", "unexpected server error; see the server log")


def _error(
    request: Request,
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: str,
) -> JSONResponse:
    _count(request, code)
    body = {"error": code, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def _count(request: Request, code: str) -> None:
    """Count a refused request in /metrics by its error code."""
    federation = getattr(request.app.state, "federation", None)
    if federation is not None:
        federation.state.count_rejection(code)
