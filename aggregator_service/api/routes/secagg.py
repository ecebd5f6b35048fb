"""The secure-aggregation endpoints: keys, shares, masked vectors, unmasking, stage view.

Thin: each checks the caller's token against the message's `client_id`, hands the message
down to the federation's `SecAggDesk` (or, for a masked vector, reads the body under the
upload limits and ingests it off the event loop) and answers. Specified in
docs/protocol.md, "Secure aggregation".
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from aggregator_service.api.auth import ClientCaller, check_client
from aggregator_service.api.body import Pace, read_body
from aggregator_service.api.deps import (
    FederationDep,
    LongPollGateDep,
    SettingsDep,
    StageWatchDep,
    UploadGateDep,
)
from aggregator_service.api.limits import JSON_BODY_LIMIT
from aggregator_service.federation.secagg_ingest import ingest_masked
from shared.errors import UnsupportedMediaType
from shared.secagg.messages import (
    KeysRequest,
    PostReply,
    SharesReply,
    SharesRequest,
    Stage,
    StageReply,
    UnmaskRequest,
)

__all__ = ["router"]

router = APIRouter(prefix="/secagg", tags=["secure aggregation"])

_MASKED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "msgpack map; `masked` is a uint32 tensor {dtype, shape, data}",
    "required": ["protocol", "client_id", "round", "attempt", "num_examples", "masked"],
    "properties": {
        "protocol": {"type": "integer", "enum": [1]},
        "client_id": {"type": "string"},
        "round": {"type": "integer", "minimum": 1},
        "attempt": {"type": "integer", "minimum": 0},
        "num_examples": {"type": "integer", "minimum": 1},
        "masked": {"type": "object"},
        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid bearer token (when tokens are configured)"},
    403: {"description": "the token belongs to another client (`wrong_client`)"},
    409: {
        "description": "another round or attempt (`stale_attempt`), another stage "
        "(`wrong_stage`), no open round (`round_closed`), a client not selected, not a "
        "participant or not a survivor, or a repeat with other content (`already_posted`)"
    },
    422: {"description": "a field, key, share or vector that cannot be accepted"},
}
_Round = Annotated[int, Query(ge=1)]
_Attempt = Annotated[int, Query(ge=0)]
_ClientId = Annotated[str, Query(min_length=1, max_length=64)]


@router.post("/keys", max_body_size=JSON_BODY_LIMIT, responses=_RESPONSES)
async def post_keys(
    body: KeysRequest, federation: FederationDep, caller: ClientCaller
) -> PostReply:
    """Advertise a selected client's public keys for this round attempt (stage `keys`)."""
    check_client(caller, body.client_id)
    return federation.secagg.advertise(body)


@router.post("/shares", max_body_size=JSON_BODY_LIMIT, responses=_RESPONSES)
async def post_shares(
    body: SharesRequest, federation: FederationDep, caller: ClientCaller
) -> PostReply:
    """Send one sealed pair of shares to each neighbour (stage `shares`)."""
    check_client(caller, body.client_id)
    return federation.secagg.post_shares(body)


@router.get("/shares", responses=_RESPONSES)
async def get_shares(
    federation: FederationDep,
    caller: ClientCaller,
    client_id: _ClientId,
    round: _Round,
    attempt: _Attempt,
) -> SharesReply:
    """Return the sealed shares addressed to the caller (from stage `masked` on)."""
    check_client(caller, client_id)
    return federation.secagg.shares_for(client_id, round, attempt)


@router.post(
    "/masked",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/msgpack": {"schema": _MASKED_SCHEMA}},
        }
    },
    responses={
        400: {"description": "undecodable msgpack or unknown protocol version"},
        408: {"description": "the body stalled or came too slowly"},
        413: {"description": "body over --max-body-bytes"},
        415: {"description": "content type is not application/msgpack"},
        503: {"description": "the upload queue is full; retry after Retry-After"},
        **_RESPONSES,
    },
)
async def post_masked(
    request: Request,
    federation: FederationDep,
    settings: SettingsDep,
    caller: ClientCaller,
    upload_gate: UploadGateDep,
) -> PostReply:
    """Fold a participant's masked vector into the round's masked sum (stage `masked`)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/msgpack":
        raise UnsupportedMediaType(
            "unsupported_media_type", f"expected application/msgpack, got {content_type!r}"
        )
    pace = Pace(
        idle_timeout_s=settings.body_idle_timeout_s,
        min_rate_bytes_s=settings.min_upload_rate_bytes_s,
        grace_s=settings.upload_grace_s,
    )
    async with upload_gate.admit(caller.client_id) as slot:
        body = await read_body(request, settings.max_body_bytes, slot.take, None, pace)
        return await run_in_threadpool(
            ingest_masked,
            body,
            desk=federation.secagg,
            spec=federation.state.spec,
            group_specs=federation.state.group_specs,
            options=federation.config.secagg,
            sender=caller.client_id,
        )


@router.post("/unmask", max_body_size=JSON_BODY_LIMIT, responses=_RESPONSES)
async def post_unmask(
    body: UnmaskRequest, federation: FederationDep, caller: ClientCaller
) -> PostReply:
    """Reveal the shares the sum needs: b of survivors, s_sk of dropped clients (stage `unmask`)."""
    check_client(caller, body.client_id)
    return federation.secagg.unmask(body)


@router.get("/state", responses={503: {"description": "too many long polls held open"}})
async def get_state(
    federation: FederationDep,
    settings: SettingsDep,
    watch: StageWatchDep,
    long_polls: LongPollGateDep,
    caller: ClientCaller,
    client_id: _ClientId,
    round: Annotated[int, Query(ge=0)] = 0,
    attempt: _Attempt = 0,
    stage: Stage | None = None,
    wait: Annotated[float, Query(ge=0, description="long-poll seconds")] = 0.0,
) -> StageReply:
    """Return the current attempt's stage; hold up to `wait` s while it is the one given."""
    check_client(caller, client_id)
    federation.state.touch(client_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, settings.long_poll_max_s)
    changed = watch.current()  # taken before the check, so no change is missed
    view = federation.secagg.view()
    if (view.round, view.attempt, view.stage) != (round, attempt, stage) or wait <= 0:
        return view
    with long_polls.hold():
        while (view.round, view.attempt, view.stage) == (round, attempt, stage):
            try:
                await asyncio.wait_for(changed.wait(), deadline - loop.time())
            except TimeoutError:
                return federation.secagg.view()
            changed = watch.current()
            view = federation.secagg.view()
    return view
