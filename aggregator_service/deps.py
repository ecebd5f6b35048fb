"""FastAPI dependencies: the objects the routes work on, taken from app.state."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request

from aggregator_service.publish import ModelWatch
from aggregator_service.runtime import Federation
from aggregator_service.settings import AggregatorSettings

__all__ = ["FederationDep", "SettingsDep", "UploadSlotsDep", "WatchDep"]


def get_federation(request: Request) -> Federation:
    """Return the running federation."""
    federation: Federation = request.app.state.federation
    return federation


def get_settings(request: Request) -> AggregatorSettings:
    """Return the aggregator's settings."""
    settings: AggregatorSettings = request.app.state.settings
    return settings


def get_watch(request: Request) -> ModelWatch:
    """Return the watch that wakes long polls."""
    watch: ModelWatch = request.app.state.watch
    return watch


def get_upload_slots(request: Request) -> asyncio.Semaphore:
    """Return the semaphore bounding how many upload bodies are held at once."""
    slots: asyncio.Semaphore = request.app.state.upload_slots
    return slots


FederationDep = Annotated[Federation, Depends(get_federation)]
SettingsDep = Annotated[AggregatorSettings, Depends(get_settings)]
WatchDep = Annotated[ModelWatch, Depends(get_watch)]
UploadSlotsDep = Annotated[asyncio.Semaphore, Depends(get_upload_slots)]
