"""What a worker did: its running summary, and which clients of a process are mid-round."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Activity", "WorkerSummary"]


@dataclass
class WorkerSummary:
    """What one worker did, reported when it ends."""

    client_id: str
    partition_id: int
    num_examples: int  # size of this client's partition
    rounds_trained: int = 0  # updates posted and accepted (duplicates included)
    rounds_skipped: int = 0  # selected but sat out (simulated dropout, empty partition)
    rounds_crashed: int = 0  # simulated crash mid-training
    rounds_rejected: int = 0  # 409 stale_round / not_selected / too_stale (async)
    rounds_failed: int = 0  # training ran out of device memory (CUDA): no update sent
    examples_trained: int = 0  # examples processed over all epochs of all trained rounds
    train_seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    last_round: int = 0  # the last server round seen
    outcome: str = "running"  # "finished" | "max_rounds" | "stopped" | "budget_spent"

    def line(self) -> str:
        """Return the one-line summary printed when the worker ends."""
        return (
            f"client {self.client_id} {self.outcome}: partition {self.partition_id} "
            f"({self.num_examples} examples), trained {self.rounds_trained} rounds, "
            f"skipped {self.rounds_skipped}, crashed {self.rounds_crashed}, rejected "
            f"{self.rounds_rejected}, failed {self.rounds_failed}, "
            f"{self.examples_trained} examples in "
            f"{self.train_seconds:.1f} s, sent {self.bytes_up / 1e6:.2f} MB, received "
            f"{self.bytes_down / 1e6:.2f} MB, last round {self.last_round}"
        )


class Activity:
    """What the clients of a process are doing: who is mid-round, and their summaries."""

    def __init__(self) -> None:
        self._busy = 0
        self._changed = threading.Condition()
        self._summaries: list[WorkerSummary] = []

    def track(self, summary: WorkerSummary) -> None:
        """Keep a client's live summary, so it can be reported even if it never returns."""
        with self._changed:
            self._summaries.append(summary)

    def summaries(self) -> list[WorkerSummary]:
        """Return the tracked summaries, in the order the clients started."""
        with self._changed:
            return list(self._summaries)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark the body as work that a stop should let finish."""
        with self._changed:
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no client is mid-round; False if `timeout` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._busy == 0, timeout=timeout)
