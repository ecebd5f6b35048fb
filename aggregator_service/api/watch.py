"""Waking long polls on the event loop when the federation publishes a new model."""

from __future__ import annotations

import asyncio

__all__ = ["ModelWatch"]


class ModelWatch:
    """Wakes long-polling requests (on the event loop) when a new model is published."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Signal a change; safe to call from any thread."""
        self._loop.call_soon_threadsafe(self._fire)

    def current(self) -> asyncio.Event:
        """Return the event the next change will set (take it before checking the model)."""
        return self._event

    def _fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
