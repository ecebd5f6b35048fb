"""Training slots: at most k trainings at a time among the virtual clients of one process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from client_worker.train import TrainingInterrupted

__all__ = ["SLOT_POLL_S", "TrainingSlots"]

T = TypeVar("T")
SLOT_POLL_S = 0.1  # how often a client waiting for a training slot looks at its stop event


class TrainingSlots:
    """At most `slots` trainings at a time among the clients sharing this object (None: any).

    With a limit, each training runs on one of `slots` threads of its own (under the name of
    the client's thread, for its log lines): the C allocator keeps freed memory in an arena
    per thread, and with every virtual client's thread training, 10 ResNet18 clients on one
    slot kept 1.4 GB more than this (docs/worker.md).
    """

    def __init__(self, slots: int | None = None) -> None:
        if slots is not None and slots < 1:
            raise ValueError(f"train_slots must be at least 1 (or None for no limit); got {slots}")
        self.slots = slots
        self._threads = (
            ThreadPoolExecutor(slots, thread_name_prefix="train-slot")
            if slots is not None
            else None
        )

    def run(self, work: Callable[[], T], stop: threading.Event | None = None) -> T:
        """Run `work` on a slot's thread, first come first served; return what it returns.

        The slot's thread goes from one training straight to the next waiting one, with no
        hand-over between threads (and of the GIL) in between. A `stop` set while the work
        still waits for a slot raises `TrainingInterrupted(0)` (nothing was trained); once
        it runs, the work watches `stop` itself.
        """
        if self._threads is None:
            return work()
        caller = threading.current_thread().name
        future = self._threads.submit(_run_named, caller, work)
        while True:
            try:
                return future.result(timeout=SLOT_POLL_S)
            except TimeoutError:
                if stop is not None and stop.is_set() and future.cancel():
                    raise TrainingInterrupted(0) from None


def _run_named(name: str, work: Callable[[], T]) -> T:
    """Run `work` on this thread under the thread name `name`, then restore its own."""
    thread = threading.current_thread()
    own, thread.name = thread.name, name
    try:
        return work()
    finally:
        thread.name = own
