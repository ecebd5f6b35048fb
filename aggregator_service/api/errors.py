"""Every error a request can end in, as one table of HTTP answers, and the one handler.

The handler looks the error's class up along its MRO, so a subclass answers as its
nearest listed base. The body is always `{"error": code, "detail": ..., **extra}`, and
each refusal is counted once in /metrics (`tributary_rejected_total{reason=code}`).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from shared.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidUpdate,
    MalformedMessage,
    PayloadTooLarge,
    ProtocolVersionError,
    RateLimited,
    Refused,
    RequestTimeout,
    StoreError,
    TensorError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)

__all__ = ["ERRORS", "Answer", "add_error_handlers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """How one class of error is answered."""

    status: int
    code: str | None = None  # None: the error's own (a Refused, an HTTPException)
    detail: str | None = None  # fixed text sent instead of the error's message
    retry_after: int | None = None
    log: int | None = None  # a level: one log line naming the error (never sent)
    traceback: bool = False  # ... with its traceback


ERRORS: dict[type[Exception], Answer] = {
    BadRequest: Answer(400),
    Unauthorized: Answer(401),
    Forbidden: Answer(403),
    RequestTimeout: Answer(408),
    Conflict: Answer(409),
    PayloadTooLarge: Answer(413),
    UnsupportedMediaType: Answer(415),
    InvalidUpdate: Answer(422),
    RateLimited: Answer(429),
    Unavailable: Answer(503),
    MalformedMessage: Answer(400, "malformed_message"),
    ProtocolVersionError: Answer(400, "unsupported_protocol"),
    TensorError: Answer(422, "invalid_tensor"),
    RequestValidationError: Answer(422, "invalid_request"),
    HTTPException: Answer(0),  # its own status, code and headers
    # The client went away mid-body: its failure, not ours; nobody reads the answer.
    ClientDisconnect: Answer(
        400, "client_disconnected", "the client disconnected", log=logging.INFO
    ),
    # State-dir failures name files in the log only; the client learns only that it failed.
    **dict.fromkeys(
        (StoreError, OSError, sqlite3.Error),
        Answer(
            503,
            "storage_unavailable",
            "the aggregator cannot persist state; retry later",
            retry_after=5,
            log=logging.ERROR,
        ),
    ),
    Exception: Answer(
        500,
        "internal_error",
        "unexpected server error; see the server log",
        log=logging.ERROR,
        traceback=True,
    ),
}


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of the table through `handle`."""
    for error in ERRORS:
        app.add_exception_handler(error, handle)


async def handle(request: Request, exc: Exception) -> JSONResponse:
    """Answer `exc` as the table says, and count it once as a refusal."""
    answer = _lookup(type(exc))
    status, code, detail = answer.status, answer.code, answer.detail or str(exc)
    headers: dict[str, str] = {}
    extra: dict[str, object] = {}
    retry_after = answer.retry_after
    if isinstance(exc, Refused):
        code, detail, extra = exc.code, exc.detail, dict(exc.extra)
        retry_after = exc.retry_after
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = exc.challenge
    elif isinstance(exc, HTTPException):
        status, detail = exc.status_code, str(exc.detail)
        raw = exc.detail if status in (404, 405) else "http_error"
        raw = "body_too_large" if status == 413 else raw  # a JSON route's max_body_size
        code = str(raw).lower().replace(" ", "_")
        headers.update(exc.headers or {})
    elif isinstance(exc, RequestValidationError):
        detail = _problems(exc)
    elif isinstance(exc, TensorError):
        extra["tensor"] = exc.tensor
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    code = code or "internal_error"
    _log(answer, code, request, exc)
    _count(request, code)
    body = {"error": code, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _lookup(error: type[Exception]) -> Answer:
    for cls in error.__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return ERRORS[Exception]


def _problems(exc: RequestValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
        for err in exc.errors()
    )
    return problems or "invalid request"


def _log(answer: Answer, code: str, request: Request, exc: Exception) -> None:
    if answer.log is None:
        return
    problem = str(exc) or type(exc).__name__
    log.log(
        answer.log,
        "%s on %s %s: %s",
        code,
        request.method,
        request.url.path,
        problem,
        exc_info=exc if answer.traceback else None,
    )


def _count(request: Request, code: str) -> None:
    """Count a refused request in /metrics by its error code."""
    federation = getattr(request.app.state, "federation", None)
    if federation is not None:
        federation.state.count_rejection(code)
