"""POST /register and POST /receive."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from aggregator_service.body import read_body
from aggregator_service.deps import FederationDep, SettingsDep, UploadSlotsDep
from aggregator_service.ingest import ingest_update
from aggregator_service.state import UpdateRejected
from shared.schemas import ReceiveReply, RegisterReply, RegisterRequest

__all__ = ["router"]

router = APIRouter(tags=["clients"])

_UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "msgpack map; tensors as {dtype, shape, data} (docs/protocol.md)",
    "required": ["protocol", "client_id", "round", "num_examples", "weights"],
    "properties": {
        "protocol": {"type": "integer", "const": 1},
        "client_id": {"type": "string"},
        "round": {"type": "integer", "minimum": 1},
        "num_examples": {"type": "integer", "minimum": 1},
        "weights": {"type": "object"},
        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}


@router.post("/register")
async def register(request: RegisterRequest, federation: FederationDep) -> RegisterReply:
    """Register a client (idempotent); it becomes eligible from the next round it is seen in."""
    reply, is_new = federation.state.register(request.client_id, request.num_examples)
    if is_new:
        await run_in_threadpool(federation.remember_client, request.client_id, request.num_examples)
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
        409: {"description": "stale round, round closed, or client not selected"},
        413: {"description": "body over --max-body-bytes"},
        415: {"description": "content type is not application/msgpack"},
        422: {"description": "wrong tensor names, shapes or dtypes; NaN/Inf; bad fields"},
        503: {"description": "an update from this client is still being processed"},
    },
)
async def receive(
    request: Request,
    federation: FederationDep,
    settings: SettingsDep,
    upload_slots: UploadSlotsDep,
) -> ReceiveReply:
    """Accept one client's weights for the current round."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/msgpack":
        raise UpdateRejected(
            415, "unsupported_media_type", f"expected application/msgpack, got {content_type!r}"
        )
    async with upload_slots:
        body = await read_body(request, settings.max_body_bytes)
        return await run_in_threadpool(
            ingest_update,
            body,
            state=federation.state,
            strategy=federation.strategy,
            store=federation.update_store,
        )
