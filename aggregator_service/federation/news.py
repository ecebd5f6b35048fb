"""Who wants to know when something changed: an explicit list of subscribers."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["News"]


class News:
    """Subscribers called after each change: the dashboard's stream, secure aggregation's stages.

    `announce` may be called with the state's lock held: subscribers must only schedule
    work (e.g. `loop.call_soon_threadsafe`), never block or take that lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, subscriber: Callable[[], None]) -> None:
        """Call `subscriber()` after every change announced."""
        with self._lock:
            self._subscribers.append(subscriber)

    def announce(self) -> None:
        """Tell every subscriber."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber()
