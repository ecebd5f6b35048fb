"""FastAPI dependencies: the objects the routes work on, taken from app.state.

They are coroutines: FastAPI runs a plain `def` dependency on its thread pool, a thread
hop per dependency per request, which cost the aggregator more than the requests' work.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aggregator_service.api.limits import LongPollGate, RateLimiter, UploadGate
from aggregator_service.api.watch import ModelWatch
from aggregator_service.federation.federation import Federation
from aggregator_service.settings import AggregatorSettings

__all__ = [
    "BoardWatchDep",
    "FederationDep",
    "LongPollGateDep",
    "ReceiveLimiterDep",
    "SettingsDep",
    "StageWatchDep",
    "UploadGateDep",
    "WatchDep",
]


async def get_federation(request: Request) -> Federation:
    """Return the running federation."""
    federation: Federation = request.app.state.federation
    return federation


async def get_settings(request: Request) -> AggregatorSettings:
    """Return the aggregator's settings."""
    settings: AggregatorSettings = request.app.state.settings
    return settings


async def get_watch(request: Request) -> ModelWatch:
    """Return the watch that wakes long polls."""
    watch: ModelWatch = request.app.state.watch
    return watch


async def get_stage_watch(request: Request) -> ModelWatch:
    """Return the watch that wakes long polls of GET /secagg/state."""
    watch: ModelWatch = request.app.state.stage_watch
    return watch


async def get_board_watch(request: Request) -> ModelWatch:
    """Return the watch that wakes the dashboard's event streams."""
    watch: ModelWatch = request.app.state.board_watch
    return watch


async def get_upload_gate(request: Request) -> UploadGate:
    """Return the gate bounding how many upload bodies are held or waiting at once."""
    gate: UploadGate = request.app.state.upload_gate
    return gate


async def get_long_poll_gate(request: Request) -> LongPollGate:
    """Return the gate bounding how many long polls are held open."""
    gate: LongPollGate = request.app.state.long_poll_gate
    return gate


async def get_receive_limiter(request: Request) -> RateLimiter:
    """Return the rate limiter of POST /receive."""
    limiter: RateLimiter = request.app.state.receive_limiter
    return limiter


FederationDep = Annotated[Federation, Depends(get_federation)]
SettingsDep = Annotated[AggregatorSettings, Depends(get_settings)]
WatchDep = Annotated[ModelWatch, Depends(get_watch)]
StageWatchDep = Annotated[ModelWatch, Depends(get_stage_watch)]
BoardWatchDep = Annotated[ModelWatch, Depends(get_board_watch)]
UploadGateDep = Annotated[UploadGate, Depends(get_upload_gate)]
LongPollGateDep = Annotated[LongPollGate, Depends(get_long_poll_gate)]
ReceiveLimiterDep = Annotated[RateLimiter, Depends(get_receive_limiter)]
