"""Reading a request body under a size limit, decided while it streams in.

A body with a Content-Length is read into one buffer of exactly that size, allocated
before the first chunk. Bodies of a MiB or more get their own anonymous mapping advised
for transparent huge pages: filling a 45 MB update then faults in about 23 pages instead
of about 11,000, which measured 7 ms instead of 27 ms per ResNet18 update on the
benchmark machine (docs/benchmarks.md). The mapping is unmapped as soon as the last view
of it is dropped, so a finished upload gives its memory straight back to the system,
unless another upload is waiting for a slot: `BodyPool` then hands it on (see there).
When a round opens, the upload gate stocks the pool with mappings already faulted in off
the event loop (`faulted_mapping`), so the round's first uploads do not zero their pages.

The body arrives through the ASGI receive stream (`request.stream()`), chunk by chunk,
each chunk copied into the buffer at its offset. A body that stalls, or that falls behind
a minimum rate once its grace period is over, is refused with 408 (`Pace`).
"""

from __future__ import annotations

import asyncio
import mmap
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request

from shared.errors import BadRequest, PayloadTooLarge, RequestTimeout

__all__ = ["MAPPED_FROM", "BodyPool", "BodyWatcher", "Pace", "faulted_mapping", "read_body"]

MAPPED_FROM = 1 << 20  # smaller bodies go to an ordinary bytearray
_UNUSED_REFS = 2  # references to a mapping nothing else holds: a local and getrefcount's
_PAGE = mmap.PAGESIZE


class BodyPool:
    """Mappings of finished uploads, handed on to the uploads waiting in line.

    The kernel zeroes a fresh mapping page by page as the body first fills it, on the event
    loop's thread: 6-13 ms per 45 MB update on the benchmark machine, as much as receiving
    it. A handed-on mapping is simply overwritten. A mapping is kept only while an upload
    waits for a slot (so with nobody in line no body memory stays mapped, and never more
    mappings exist than slots), and only if nothing refers to it any more, so no view of an
    earlier body can see a later one. `stock` adds mappings faulted in elsewhere, within
    the same bound. Used on the event loop only.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._idle: list[mmap.mmap] = []

    def take(self, size: int) -> memoryview:
        """Return a writable buffer of exactly `size` bytes, reusing a kept mapping that fits."""
        if size < MAPPED_FROM:
            return memoryview(bytearray(size))
        while self._idle:  # each take consumes a kept mapping: reuse it or unmap it
            mapping = self._idle.pop()
            if size <= len(mapping) <= size + size // 4:
                return memoryview(mapping)[:size]
            mapping.close()
        return memoryview(_allocate(size))

    def give_back(self, body: memoryview, *, hand_on: bool) -> None:
        """Release `body` (not to be used again); keep its mapping if `hand_on` and unused."""
        mapping = body.obj
        try:
            body.release()
        except BufferError:  # something still reads the body through this very view
            return
        if not hand_on:
            self.clear()
            return
        if not isinstance(mapping, mmap.mmap) or len(self._idle) >= self._keep:
            return
        if sys.getrefcount(mapping) > _UNUSED_REFS:  # some view of the body is still alive
            return
        self._idle.append(mapping)

    @property
    def kept(self) -> int:
        """Mappings ready for the next bodies."""
        return len(self._idle)

    def missing(self, *, in_use: int) -> int:
        """How many more mappings the bound allows while `in_use` bodies are held."""
        return max(0, self._keep - len(self._idle) - in_use)

    def stock(self, mappings: list[mmap.mmap], *, in_use: int) -> None:
        """Keep `mappings` while `in_use` bodies plus the kept ones stay within the bound."""
        for mapping in mappings:
            if len(self._idle) + in_use < self._keep:
                self._idle.append(mapping)
            else:
                mapping.close()

    def clear(self) -> None:
        """Unmap every kept mapping."""
        while self._idle:
            self._idle.pop().close()


class BodyWatcher(Protocol):
    """Follows a body with a Content-Length as it arrives in its buffer (journal_stream.py)."""

    def start(self, buffer: memoryview) -> None:
        """The body goes into `buffer`, from its start."""

    def advance(self, filled: int) -> None:
        """The first `filled` bytes of the buffer are in (called on the event loop)."""


@dataclass(frozen=True)
class Pace:
    """How fast a body must arrive: a stalled or too slow client must not hold its slot."""

    idle_timeout_s: float | None = None  # no byte for this long: 408 body_timeout
    min_rate_bytes_s: float = 0.0  # fewer bytes than this per second ... : 408 body_too_slow
    grace_s: float = 0.0  # ... once this many seconds of the body are over

    @property
    def enforced(self) -> bool:
        """Whether any limit is set."""
        return self.idle_timeout_s is not None or self.min_rate_bytes_s > 0


async def read_body(
    request: Request,
    limit: int,
    allocate: Callable[[int], memoryview] | None = None,
    watcher: BodyWatcher | None = None,
    pace: Pace | None = None,
) -> memoryview:
    """Return the body, refusing with 413 as soon as it is known to exceed `limit` bytes.

    A body with a Content-Length goes into `allocate(length)` (default: a fresh buffer),
    and `watcher` follows it there as it arrives. A body that does not keep `pace` is
    refused with 408.
    """
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise BadRequest("bad_content_length", "Content-Length is not a number")
    size = None if declared is None else int(declared)
    if size is not None and size > limit:
        raise _too_large(size, limit)
    timer = _PaceTimer(pace) if pace is not None and pace.enforced else None
    try:
        if size is None:
            return memoryview(await _read_growing(request, limit, timer))
        buffer = allocate(size) if allocate is not None else memoryview(_allocate(size))
        return await _read_sized(request, buffer, size, watcher, timer)
    except asyncio.CancelledError:
        if timer is None or not timer.expired():
            raise
        raise _too_slow(timer.pace, stalled=timer.stalled) from None
    finally:
        if timer is not None:
            timer.close()


async def _read_sized(
    request: Request,
    buffer: memoryview,
    size: int,
    watcher: BodyWatcher | None,
    timer: _PaceTimer | None,
) -> memoryview:
    """Read a body with a Content-Length of `size` into `buffer` (`size` bytes)."""
    if watcher is not None:
        watcher.start(buffer)

    def arrived(filled: int) -> None:
        if timer is not None:
            timer.advance(filled)
        if watcher is not None:
            watcher.advance(filled)

    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end > size:
            raise BadRequest(
                "bad_content_length", f"body is longer than its Content-Length of {size}"
            )
        buffer[filled:end] = chunk
        filled = end
        arrived(filled)
    return buffer if filled == size else buffer[:filled]


async def _read_growing(request: Request, limit: int, timer: _PaceTimer | None) -> bytearray:
    """Read a body of unknown length (chunked transfer encoding)."""
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise _too_large(len(body) + len(chunk), limit)
        body += chunk
        if timer is not None:
            timer.advance(len(body))
    return body


class _PaceTimer:
    """Cancels the current task once the body falls behind its `Pace` (on the event loop).

    The body is due `grace_s` after its start plus one second per `min_rate_bytes_s` bytes
    in (the rule of Apache's mod_reqtimeout MinRate), and within `idle_timeout_s` of its
    last byte. `advance` only notes the time and count, so a body arriving in many small
    chunks costs nothing more; the timer checks when it fires and sets itself again if
    bytes came meanwhile.
    """

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._start = self._last = self._loop.time()
        self._filled = 0
        self._fired = False
        self.stalled = False  # it fired for want of any byte, not for a slow rate
        self._timer = self._loop.call_at(self._due(), self._check)

    def advance(self, filled: int) -> None:
        """Note that the body holds `filled` bytes as of just now."""
        self._last = self._loop.time()
        self._filled = filled

    def expired(self) -> bool:
        """Whether the limit cancelled the task; takes that cancellation back if so."""
        if self._fired and self._task is not None:
            self._task.uncancel()
        return self._fired

    def close(self) -> None:
        """Stop watching."""
        self._timer.cancel()

    def _due(self) -> float:
        pace = self.pace
        due = float("inf")
        if pace.idle_timeout_s is not None:
            due = self._last + pace.idle_timeout_s
        if pace.min_rate_bytes_s > 0:
            due = min(due, self._start + pace.grace_s + self._filled / pace.min_rate_bytes_s)
        return due

    def _check(self) -> None:
        now = self._loop.time()
        due = self._due()
        if now < due:
            self._timer = self._loop.call_at(due, self._check)
        elif self._task is not None:
            idle = self.pace.idle_timeout_s
            self.stalled = idle is not None and now >= self._last + idle
            self._fired = True
            self._task.cancel()


def _allocate(size: int) -> bytearray | mmap.mmap:
    """Return a writable buffer of `size` bytes; large ones are huge-page-backed if possible."""
    if size < MAPPED_FROM:
        return bytearray(size)
    return _map(size)


def _map(size: int) -> mmap.mmap:
    """Return an anonymous mapping of `size` bytes, advised for transparent huge pages."""
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux only; elsewhere ordinary pages
        mapping.madvise(mmap.MADV_HUGEPAGE)
    return mapping


def faulted_mapping(size: int) -> mmap.mmap:
    """Return a body mapping of `size` bytes whose pages the kernel has already zeroed.

    One byte written per page faults each in (with huge pages, each 2 MiB at its first
    byte): the zeroing a fresh mapping costs is paid here, by the caller's thread.
    """
    mapping = _map(size)
    for offset in range(0, len(mapping), _PAGE):
        mapping[offset] = 0
    return mapping


def _too_slow(pace: Pace, *, stalled: bool) -> RequestTimeout:
    if stalled:
        return RequestTimeout(
            "body_timeout", f"no byte of the body arrived for {pace.idle_timeout_s:g} s"
        )
    return RequestTimeout(
        "body_too_slow",
        f"the body arrived slower than {pace.min_rate_bytes_s:g} bytes/s "
        f"after its first {pace.grace_s:g} s",
    )


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        "body_too_large", f"body of {size}+ bytes exceeds the limit of {limit} bytes"
    )
