"""GET /events: the dashboard's Server-Sent Events stream of the run, the clients and rounds.

Each change the dashboard shows (a client registers, downloads the round's model, starts or
finishes an upload, is refused; a round opens or closes) wakes every stream at once. The
stream answers with a `state` event (GET /status, GET /clients and the run's summary), a
`rounds` event with the /history rows it has not sent yet (the first one: all rows, even
none), and a `model` event (GET /model) when a new model is published. A comment line
keeps idle connections open. The stream ends after `long_poll_max_s` (it counts as a long
poll), or after its first batch once the run is finished; the page reconnects and gets
everything again, which is also how it recovers from an aggregator restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import ExitStack
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from aggregator_service.api.auth import reader_caller
from aggregator_service.api.deps import BoardWatchDep, FederationDep, LongPollGateDep, SettingsDep
from aggregator_service.api.watch import ModelWatch
from aggregator_service.federation.board import client_board, run_summary
from aggregator_service.federation.federation import Federation
from aggregator_service.federation.publish import PublishedModel

__all__ = ["router", "sse"]

router = APIRouter(tags=["inspect"])

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
BATCH_GAP_S = 0.2  # changes closer than this go out together (a round of 1000 uploads)
RETRY_MS = 1000  # how soon a browser's EventSource reconnects after the stream ends


@router.get(
    "/events",
    dependencies=[Depends(reader_caller)],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream"}},
)
async def events(
    federation: FederationDep,
    settings: SettingsDep,
    watch: BoardWatchDep,
    long_polls: LongPollGateDep,
) -> StreamingResponse:
    """Stream the run's state, its closed rounds and its model as Server-Sent Events."""
    held = ExitStack()
    held.enter_context(long_polls.hold())  # 503 now when too many streams are open
    stream = _stream(federation, watch, settings.long_poll_max_s, held)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


def sse(event: str, data: Any) -> str:
    """Return one Server-Sent Event: its name and its data as one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(
    federation: Federation, watch: ModelWatch, max_s: float, held: ExitStack
) -> AsyncIterator[str]:
    """Send everything, then what changed after each wake-up, until `max_s` has passed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + max_s
    state = federation.state
    sent_rows = 0
    sent_model: str | None = None
    first = True
    run = run_summary(federation.config)
    with held:
        yield f"retry: {RETRY_MS}\n\n"
        while True:
            changed = watch.current()  # taken before the snapshot, so no change is missed
            board = {"status": state.status(), "clients": client_board(state), "run": run}
            yield sse("state", board)
            with state.lock:
                rows = state.history[sent_rows:]
                sent_rows = len(state.history)
            if rows or first:  # the first, even empty, replaces what the page holds
                yield sse("rounds", rows)
            first = False
            published = state.published
            if published.etag != sent_model:
                sent_model = published.etag
                summary = await run_in_threadpool(_summary, published)  # hashes it once
                yield sse("model", summary)
            if published.phase == "finished":  # nothing changes any more
                return
            await asyncio.sleep(BATCH_GAP_S)  # what changes meanwhile sets `changed`
            while not await _wait(changed, end, loop):
                if loop.time() >= end:
                    return
                yield ": keepalive\n\n"


def _summary(published: PublishedModel) -> dict[str, Any]:
    return published.summary


async def _wait(changed: asyncio.Event, end: float, loop: asyncio.AbstractEventLoop) -> bool:
    """Wait for `changed` up to KEEPALIVE_S and until `end`; return whether it came."""
    remaining = min(end - loop.time(), KEEPALIVE_S)
    if remaining <= 0:
        return False
    try:
        await asyncio.wait_for(changed.wait(), remaining)
    except TimeoutError:
        return False
    return True
