"""POST /register and POST /receive."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from aggregator_service.api.auth import ClientCaller, check_client
from aggregator_service.api.body import Pace, read_body
from aggregator_service.api.deps import FederationDep, ReceiveLimiterDep, SettingsDep, UploadGateDep
from aggregator_service.api.early_refusal import EarlyRefusal
from aggregator_service.api.limits import JSON_BODY_LIMIT
from aggregator_service.federation.ingest import ingest_update
from aggregator_service.settings import AggregatorSettings
from aggregator_service.store.journal_stream import StreamedBody
from shared.errors import UnsupportedMediaType
from shared.schemas import ReceiveReply, RegisterReply, RegisterRequest

__all__ = ["router"]

router = APIRouter(tags=["clients"])

_UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "msgpack map; tensors as {dtype, shape, data} (docs/protocol.md)",
    "required": ["protocol", "client_id", "round", "num_examples", "weights"],
    "properties": {
        "protocol": {"type": "integer", "enum": [1, 2]},
        "client_id": {"type": "string"},
        "round": {"type": "integer", "minimum": 1},
        "num_examples": {"type": "integer", "minimum": 1},
        "weights": {"type": "object"},
        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
        "groups": {"type": "object", "description": "protocol 2 only: name -> tensors"},
        "delta": {
            "type": "boolean",
            "description": "weights are trained - global, float32 ones possibly compressed "
            "maps; only when the round config has compression",
        },
    },
}
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid bearer token (when tokens are configured)"},
    403: {"description": "the token belongs to another client (`wrong_client`)"},
}


@router.post("/register", max_body_size=JSON_BODY_LIMIT, responses=_AUTH_RESPONSES)
async def register(
    body: RegisterRequest, request: Request, federation: FederationDep, caller: ClientCaller
) -> RegisterReply:
    """Register a client (idempotent); it becomes eligible from the next round it is seen in."""
    check_client(caller, body.client_id)
    reply, is_new = federation.state.register(body.client_id, body.num_examples)
    if is_new:
        await run_in_threadpool(federation.remember_client, body.client_id, body.num_examples)
    return reply


@router.post(
    "/receive",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/msgpack": {"schema": _UPDATE_SCHEMA}},
        }
    },
    responses={
        400: {"description": "undecodable msgpack or unknown protocol version"},
        408: {
            "description": "no byte of the body arrived for --body-idle-timeout-s, or it came "
            "slower than --min-upload-rate-bytes-s after --upload-grace-s"
        },
        **_AUTH_RESPONSES,
        409: {"description": "stale round, round closed, or client not selected"},
        413: {"description": "body over --max-body-bytes"},
        415: {"description": "content type is not application/msgpack"},
        422: {"description": "wrong tensor names, shapes or dtypes; NaN/Inf; bad fields"},
        429: {
            "description": "over --receive-rate / --receive-burst, or this client already has "
            "an upload in progress; retry after Retry-After"
        },
        503: {
            "description": "an update from this client is still being processed, the upload "
            "queue is full or no slot came free in time, or the state dir cannot be written; "
            "retry after Retry-After"
        },
    },
)
async def receive(
    request: Request,
    federation: FederationDep,
    settings: SettingsDep,
    caller: ClientCaller,
    limiter: ReceiveLimiterDep,
    upload_gate: UploadGateDep,
) -> ReceiveReply:
    """Accept one client's weights for the current round."""
    if caller.client_id is not None:  # without tokens, clients cannot be told apart
        limiter.check(caller.client_id)
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/msgpack":
        raise UnsupportedMediaType(
            "unsupported_media_type", f"expected application/msgpack, got {content_type!r}"
        )
    async with upload_gate.admit(caller.client_id) as slot:
        arrived = time.monotonic()  # its upload_s in /history counts from here
        streamed = federation.store.updates.stream()
        watcher = EarlyRefusal(streamed, federation.state)
        try:
            body = await read_body(
                request,
                settings.max_body_bytes,
                slot.take,
                watcher,
                _pace(settings),
            )
            return await run_in_threadpool(
                ingest_update,
                body,
                state=federation.state,
                store=federation.store,
                durable=settings.persist_updates,
                sender=caller.client_id,
                streamed=streamed,
                strategy=federation.strategy,
                arrived=arrived,
            )
        finally:
            if streamed.following:  # the update was not saved
                await _discard(streamed)


def _pace(settings: AggregatorSettings) -> Pace:
    return Pace(
        idle_timeout_s=settings.body_idle_timeout_s,
        min_rate_bytes_s=settings.min_upload_rate_bytes_s,
        grace_s=settings.upload_grace_s,
    )


async def _discard(streamed: StreamedBody) -> None:
    """Delete what was streamed of a refused update before its slot's buffer is reused."""
    try:
        await run_in_threadpool(streamed.discard)
    except asyncio.CancelledError:  # on the loop, then: no step may read a reused buffer
        streamed.discard()
        raise
