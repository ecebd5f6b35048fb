"""A client's own timeline: which phase it is in, written to a JSON-lines file as phases end.

`Timeline` follows one client through its loop (the phases are `shared.timeline`'s): it
opens `idle` when it polls with nothing else open, ends `idle` or `waiting` when a round it
takes part in arrives, turns `waiting` into `idle` when a later round goes on without it,
and is told when training starts, when the update is ready to upload and when the post is
answered. Every span ends up in a `TimelineFile`, which the virtual clients of a process
share; a client without one records nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from shared.timeline import Phase, PhaseSpan

__all__ = ["Timeline", "TimelineFile"]

T = TypeVar("T")
Clock = Callable[[], float]


class TimelineFile:
    """Appends spans to one JSON-lines file, a line at a time, for the clients of a process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, span: PhaseSpan) -> None:
        """Append one span and close the file, so a killed worker leaves whole lines."""
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(span.line())


class Timeline:
    """One client's current phase; each phase that ends goes to the file (if any)."""

    def __init__(
        self, client_id: str, sink: TimelineFile | None = None, *, clock: Clock = time.time
    ) -> None:
        self.client_id = client_id
        self.sink = sink
        self.clock = clock
        self.open: tuple[Phase, int, float] | None = None  # phase, round, start

    def enter(self, phase: Phase, server_round: int) -> None:
        """End the open phase now and open `phase` of `server_round`."""
        now = self.clock()
        self._end(now)
        self.open = (phase, server_round, now)

    def close(self) -> None:
        """End the open phase now, opening none."""
        self._end(self.clock())
        self.open = None

    def polling(self, server_round: int) -> None:
        """Open `idle` before a poll, unless a phase is open."""
        if self.open is None:
            self.enter("idle", server_round)

    def seen(self, server_round: int, *, taking_part: bool) -> None:
        """React to a round the server sent: take part, or keep waiting or idling."""
        if taking_part:
            self.close()
            return
        if self.open is None:
            self.enter("idle", server_round)
            return
        _, opened_round, _ = self.open
        if server_round > opened_round:  # a later round goes on without this client
            self.enter("idle", server_round)

    def training(self, server_round: int, work: Callable[[], T]) -> T:
        """Open `training` of `server_round`, then run `work` (the local training)."""
        self.enter("training", server_round)
        return work()

    def round_over(self, server_round: int) -> None:
        """After a round's part: wait for the next round if the update was posted, else stop."""
        if self.open is not None and self.open[0] == "uploading":
            self.enter("waiting", server_round)
        else:
            self.close()

    def _end(self, now: float) -> None:
        if self.open is None or self.sink is None:
            return
        phase, server_round, start = self.open
        self.sink.append(PhaseSpan(self.client_id, server_round, phase, start, max(now, start)))
