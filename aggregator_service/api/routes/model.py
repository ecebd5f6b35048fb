"""GET /get_weights (msgpack, ETag, long poll) and GET /model (readable summary)."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from aggregator_service.api.auth import ReaderCaller, check_client, reader_caller
from aggregator_service.api.deps import FederationDep, LongPollGateDep, SettingsDep, WatchDep
from aggregator_service.api.limits import LongPollGate
from aggregator_service.api.watch import ModelWatch
from aggregator_service.federation.publish import PublishedModel
from aggregator_service.federation.state import FederationState
from shared.errors import BadRequest

__all__ = ["router"]

router = APIRouter(tags=["model"])

MSGPACK = "application/msgpack"
MAX_ETAG_CHARS = 128
_ETAG = re.compile(rf'"[\x21\x23-\x7e]{{1,{MAX_ETAG_CHARS}}}"')
_WEIGHTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The global model as a msgpack message (see docs/protocol.md), or "
        "its steps since the version X-Tributary-Base names (download compression); "
        "a JSON summary instead when the request accepts only application/json.",
        "content": {MSGPACK: {}, "application/json": {}},
    },
    304: {"description": "Not modified: the ETag in If-None-Match is still current."},
    400: {"description": "X-Tributary-Base is not one ETag (`bad_base`)"},
    401: {"description": "missing or invalid bearer token (when tokens are configured)"},
    403: {"description": "`client_id` is not the client of the token (`wrong_client`)"},
    503: {"description": "too many long polls held open (`too_many_polls`); see Retry-After"},
}


@router.get("/get_weights", responses=_WEIGHTS_RESPONSES, response_class=Response)
async def get_weights(
    request: Request,
    federation: FederationDep,
    settings: SettingsDep,
    watch: WatchDep,
    long_polls: LongPollGateDep,
    caller: ReaderCaller,
    client_id: Annotated[str | None, Query(max_length=64)] = None,
    min_round: Annotated[int, Query(ge=0)] = 0,
    wait: Annotated[float, Query(ge=0, description="long-poll seconds")] = 0.0,
    if_none_match: Annotated[str | None, Header()] = None,
    x_tributary_base: Annotated[
        str | None, Header(description="the ETag of the model the caller holds")
    ] = None,
) -> Response:
    """Serve the global model; hold the request up to `wait` s until something new exists."""
    state = federation.state
    base = _base_etag(x_tributary_base)
    if client_id is not None:
        check_client(caller, client_id)
        state.touch(client_id, min_round)
    timeout = min(wait, settings.long_poll_max_s)
    published = await _await_new(
        state, watch, long_polls, min_round, if_none_match, timeout, client_id
    )
    headers = {
        "ETag": published.etag,
        "Cache-Control": "no-cache",
        "X-Tributary-Round": str(published.server_round),
        "X-Tributary-Phase": published.phase,
    }
    if client_id is not None:
        headers["X-Tributary-Selected"] = str(client_id in published.selected).lower()
    if not published.news_to(client_id, if_none_match):
        return Response(status_code=304, headers=headers)
    if _wants_json(request):
        summary = await run_in_threadpool(lambda: published.summary)  # hashes 45 MB once
        return JSONResponse(summary, headers=headers)
    payload = published.payload
    if base is not None and federation.downlink is not None:
        delta = await run_in_threadpool(federation.downlink.answer, published, base)
        if delta is not None:  # else the full weights: the base is unknown or too old
            payload = delta
            headers["X-Tributary-Delta-Base"] = base
    state.count_bytes_out(len(payload), len(published.payload), client_id=client_id)
    return Response(payload, media_type=MSGPACK, headers=headers)


@router.get("/model", dependencies=[Depends(reader_caller)])
def model_summary(federation: FederationDep) -> dict[str, Any]:
    """Return round, model name, per-tensor shape, dtype and L2 norm, sizes and sha256."""
    return federation.state.published.summary


async def _await_new(
    state: FederationState,
    watch: ModelWatch,
    long_polls: LongPollGate,
    min_round: int,
    etag: str | None,
    timeout: float,
    client_id: str | None,
) -> PublishedModel:
    """Return the published model once it is new to the caller, finished, or time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    changed = watch.current()  # taken before the check, so no publish is missed
    published = state.published
    if _answer_now(published, min_round, etag, client_id) or timeout <= 0:
        return published
    with long_polls.hold():  # 503 when too many requests are held already
        while True:
            try:
                await asyncio.wait_for(changed.wait(), deadline - loop.time())
            except TimeoutError:
                return state.published
            changed = watch.current()
            published = state.published
            if _answer_now(published, min_round, etag, client_id) or loop.time() >= deadline:
                return published


def _base_etag(header: str | None) -> str | None:
    """Return the ETag an X-Tributary-Base header names; a malformed one is a 400."""
    if header is None or _ETAG.fullmatch(header):
        return header
    raise BadRequest(
        "bad_base",
        "X-Tributary-Base must be one ETag as GET /get_weights sent it (a quoted string "
        f"of at most {MAX_ETAG_CHARS} printable characters, no quote inside), got "
        f"{header[:80]!r}",
    )


def _answer_now(
    published: PublishedModel, min_round: int, etag: str | None, client_id: str | None
) -> bool:
    fresh = published.server_round >= min_round and published.news_to(client_id, etag)
    return fresh or published.phase == "finished"


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and MSGPACK not in accept
