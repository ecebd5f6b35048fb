"""The FastAPI application: `create_app(settings)` builds it; the lifespan runs the federation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from aggregator_service.publish import ModelWatch
from aggregator_service.rounds import Evaluator
from aggregator_service.routes import inspect, model, updates
from aggregator_service.runtime import Federation
from aggregator_service.settings import AggregatorSettings
from aggregator_service.state import UpdateRejected
from aggregator_service.store import StoreError
from shared.config import ExperimentConfig, load_config
from shared.errors import MalformedMessage, ProtocolVersionError, TensorError

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    settings: AggregatorSettings,
    config: ExperimentConfig | None = None,
    *,
    evaluator: Evaluator | None = None,
    on_finished: Callable[[], None] = lambda: None,
) -> FastAPI:
    """Build the aggregator app; the federation starts and stops with the app's lifespan.

    `config` defaults to the YAML at settings.config; `evaluator` defaults to evaluating on
    the dataset's test split when the config asks for server-side evaluation.
    """
    experiment = config if config is not None else load_config(settings.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        evaluate = evaluator
        if evaluate is None and experiment.server_eval:
            evaluate = await run_in_threadpool(_default_evaluator, experiment)
        federation = await run_in_threadpool(
            Federation, settings, experiment, evaluator=evaluate, on_finished=on_finished
        )
        watch = ModelWatch(asyncio.get_running_loop())
        federation.state.on_publish = watch.notify
        app.state.federation = federation
        app.state.watch = watch
        app.state.upload_slots = asyncio.Semaphore(settings.max_concurrent_uploads)
        federation.start()
        try:
            yield
        finally:
            await run_in_threadpool(federation.close)

    app = FastAPI(
        title="Tributary aggregator",
        summary="Federated averaging over HTTP: workers fetch the global model and post updates.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    _add_error_handlers(app)
    for router in (model.router, updates.router, inspect.router):
        app.include_router(router)
    return app


def _default_evaluator(config: ExperimentConfig) -> Evaluator:
    from aggregator_service.evaluation import ServerEvaluator  # torch and the dataset: only here

    return ServerEvaluator(config)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UpdateRejected)
    async def rejected(request: Request, exc: UpdateRejected) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        body = {"error": exc.code, "detail": exc.detail, **exc.extra}
        return JSONResponse(body, status_code=exc.status, headers=headers)

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

    @app.exception_handler(StoreError)
    async def store(request: Request, exc: StoreError) -> JSONResponse:
        log.error("state dir problem: %s", exc)
        return _error(request, 503, "storage_unavailable", "the aggregator cannot persist state")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(request, 500, "internal_error", "unexpected server error; see the server log")


def _error(request: Request, status: int, code: str, detail: str, **extra: str) -> JSONResponse:
    app_state = getattr(request.app.state, "federation", None)
    if app_state is not None:
        app_state.state.count_rejection(code)
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status)
