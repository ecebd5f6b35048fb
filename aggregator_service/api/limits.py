"""Limits that keep the aggregator working under abuse: rates, upload queue, long polls.

- `RateLimiter`: a token bucket per key (the client id with authentication, else the
  remote address) for POST /receive; over the limit: 429 with Retry-After.
- `UploadGate`: at most `slots` upload bodies held at once and `max_waiting` uploads
  waiting for a slot; one more gets 503 at once instead of queueing without bound, and
  one that waits longer than `queue_timeout_s` gets 503 too. A client (by the id of its
  token) has at most one upload admitted: a second one at the same time gets 429 at once,
  so one client cannot take every slot and place in line. A slot gives its body's buffer
  to the next upload in line (`body.BodyPool`). When a round opens, `prepare` faults in
  a body buffer per free slot on a worker thread.
- `LongPollGate`: at most `limit` GET /get_weights requests held open; a request that
  would have to wait beyond that gets 503 (answering at once would make workers spin).

The gates run on the event loop only, so plain counters suffice; `UploadGate.prepare` is
the one entry from another thread, and it hands its work to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import mmap
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from aggregator_service.api.body import MAPPED_FROM, BodyPool, faulted_mapping
from shared.errors import RateLimited, Unavailable

__all__ = [
    "BUSY_RETRY_AFTER_S",
    "JSON_BODY_LIMIT",
    "LongPollGate",
    "RateLimiter",
    "UploadGate",
    "UploadSlot",
]

# A JSON request body (register, secure aggregation's keys, shares and reveals) is read
# whole before it is parsed: beyond this it is refused with 413 while it arrives.
JSON_BODY_LIMIT = 8 << 20
BUSY_RETRY_AFTER_S = 2  # Retry-After of a 503 for a full upload queue or long-poll cap
UPDATE_HEADROOM = 1 << 16  # an update's header and metrics beyond the model's weights
MAX_KEYS = 100_000  # buckets remembered; the least recently used go first


class RateLimiter:
    """Token buckets: `rate` requests per second per key, up to `burst` at once."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: tokens, t

    @property
    def enabled(self) -> bool:
        """Whether a rate is set (0 means no limit)."""
        return self.rate > 0

    def take(self, key: str) -> float:
        """Spend one token of `key`; return 0.0, or the seconds until one is available."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)
        return wait

    def check(self, key: str) -> None:
        """Spend one token of `key` or raise 429 `rate_limited` with Retry-After."""
        wait = self.take(key)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RateLimited(
                "rate_limited",
                f"more than {self.burst} updates at once or {self.rate:g} per second; "
                f"retry after {seconds} s",
                retry_after=seconds,
            )


class UploadSlot:
    """One admitted upload: where its body goes."""

    def __init__(self, bodies: BodyPool) -> None:
        self._bodies = bodies
        self.body: memoryview | None = None

    def take(self, size: int) -> memoryview:
        """Return the buffer for a body of `size` bytes (the slot gives it back at its end)."""
        self.body = self._bodies.take(size)
        return self.body


class UploadGate:
    """Upload slots plus a bounded waiting line; beyond both, 503 `server_busy`."""

    def __init__(
        self, *, slots: int, max_waiting: int, queue_timeout_s: float | None = None
    ) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._bodies = BodyPool(keep=slots)
        self._uploading: set[str] = set()  # clients with an upload admitted
        self.capacity = slots + max_waiting
        self.queue_timeout_s = queue_timeout_s
        self.admitted = 0  # holding a slot or waiting for one
        self.holding = 0  # holding a slot

    @property
    def waiting(self) -> int:
        """Uploads admitted to the line but not yet holding a slot."""
        return self.admitted - self.holding

    @property
    def kept(self) -> int:
        """Body buffers ready for the next uploads."""
        return self._bodies.kept

    def prepare(self, payload_bytes: int | None, loop: asyncio.AbstractEventLoop) -> None:
        """From any other thread: ready buffers for updates to a model of `payload_bytes`.

        Called on the round loop's thread as a round is published (`payload_bytes`: the
        size of its GET /get_weights body): the kernel zeroes the round's first body
        buffers there, while its clients train, not on the event loop while their uploads
        stream in. None means no round is open: the kept buffers go.
        """
        size = None if payload_bytes is None else payload_bytes + UPDATE_HEADROOM
        if size is None or size < MAPPED_FROM:
            done: Callable[[], None] = self._drop_kept
        else:  # the count read here is a hint; `stock`, on the loop, enforces the bound
            count = self._bodies.missing(in_use=self.holding)
            done = functools.partial(self._stock, [faulted_mapping(size) for _ in range(count)])
        with contextlib.suppress(RuntimeError):  # the loop is closed: the app has stopped
            loop.call_soon_threadsafe(done)

    def _stock(self, mappings: list[mmap.mmap]) -> None:
        self._bodies.stock(mappings, in_use=self.holding)

    def _drop_kept(self) -> None:
        if self.admitted == 0:
            self._bodies.clear()

    @asynccontextmanager
    async def admit(self, client_id: str | None = None) -> AsyncIterator[UploadSlot]:
        """Hold an upload slot for the block, waiting in line if there is room in it.

        `client_id` (None: clients cannot be told apart) may have one upload admitted.
        """
        if client_id is not None and client_id in self._uploading:
            raise RateLimited(
                "upload_in_progress",
                f"client {client_id!r} already has an upload in progress; "
                f"retry after {BUSY_RETRY_AFTER_S} s",
                retry_after=BUSY_RETRY_AFTER_S,
            )
        if self.admitted >= self.capacity:
            raise _busy("server_busy", "too many uploads are in progress or waiting")
        self.admitted += 1
        if client_id is not None:
            self._uploading.add(client_id)
        try:
            await self._wait_for_slot()
            self.holding += 1
            slot = UploadSlot(self._bodies)
            try:
                yield slot
            finally:
                if slot.body is not None:
                    self._bodies.give_back(slot.body, hand_on=self.waiting > 0)
                slot.body = None
                self.holding -= 1
                self._slots.release()
        finally:
            self.admitted -= 1
            if client_id is not None:
                self._uploading.discard(client_id)
            if self.admitted == 0:  # e.g. the one in line went away: keep nothing
                self._bodies.clear()

    async def _wait_for_slot(self) -> None:
        """Take a slot, or raise 503 `server_busy` after `queue_timeout_s` in line."""
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise _busy(
                "server_busy", f"no upload slot came free within {self.queue_timeout_s:g} s"
            ) from None


class LongPollGate:
    """Counts the requests held open; refuses to hold more than `limit`."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Count a held request for the block, or raise 503 `too_many_polls`."""
        if self.held >= self.limit:
            raise _busy("too_many_polls", "too many long polls are held open")
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1


def _busy(code: str, detail: str) -> Unavailable:
    return Unavailable(
        code, f"{detail}; retry after {BUSY_RETRY_AFTER_S} s", retry_after=BUSY_RETRY_AFTER_S
    )
