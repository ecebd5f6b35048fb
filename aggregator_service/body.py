"""Reading a request body under a size limit, decided while it streams in.

A body with a Content-Length is read into one buffer of exactly that size, allocated
before the first chunk. Bodies of a MiB or more get their own anonymous mapping advised
for transparent huge pages: filling a 45 MB update then faults in about 23 pages instead
of about 11,000, which measured 7 ms instead of 27 ms per ResNet18 update on the
benchmark machine (docs/benchmarks.md). POST /receive takes its buffers from
`BodyBuffers` and gives them back when the update is ingested, so the next upload reuses
the mapping instead of having fresh pages zeroed; other mappings are unmapped as soon as
their last view is dropped.

Served by the direct upload protocol (fastpath.py), a large body is read from the socket
straight into that buffer, through the scope extension `tributary.body_into`.
"""

from __future__ import annotations

import mmap
import sys

from fastapi import Request

from aggregator_service.fastpath_http import BODY_INTO
from aggregator_service.state import UpdateRejected

__all__ = ["BodyBuffers", "read_body"]

_MAPPED_FROM = 1 << 20  # smaller bodies go to an ordinary bytearray
_UNUSED_REFS = 2  # references to a mapping nothing else holds: a local and getrefcount's


class BodyBuffers:
    """Mappings of finished uploads, kept to hold the next ones.

    A fresh mapping is zeroed by the kernel page by page as the body first fills it (about
    5 ms per 45 MB update on the benchmark machine); a kept one is simply overwritten. At
    most `keep` idle mappings are kept (one per upload slot). A mapping is kept only if
    nothing refers to it any more, so no view of an earlier body can see a later one.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._idle: list[mmap.mmap] = []

    def take(self, size: int) -> memoryview:
        """Return a writable view of exactly `size` bytes."""
        if size < _MAPPED_FROM:
            return memoryview(bytearray(size))
        for index, mapping in enumerate(self._idle):
            if size <= len(mapping) <= 2 * size:
                del self._idle[index]
                return memoryview(mapping)[:size]
        return memoryview(_allocate(size))[:size]

    def give_back(self, body: memoryview) -> None:
        """Release `body` (the caller must not use it again); keep its mapping if now unused."""
        mapping = body.obj
        body.release()
        if not isinstance(mapping, mmap.mmap) or len(self._idle) >= self._keep:
            return
        if sys.getrefcount(mapping) > _UNUSED_REFS:  # some view of it is still alive
            return
        self._idle.append(mapping)


async def read_body(request: Request, limit: int, buffers: BodyBuffers | None = None) -> memoryview:
    """Return the body, refusing with 413 as soon as it is known to exceed `limit` bytes.

    With `buffers`, a body with a Content-Length goes into a buffer taken from them.
    """
    declared = request.headers.get("content-length")
    if declared is None:
        return memoryview(await _read_growing(request, limit))
    if not declared.isdigit():
        raise UpdateRejected(400, "bad_content_length", "Content-Length is not a number")
    size = int(declared)
    if size > limit:
        raise _too_large(size, limit)
    buffer = buffers.take(size) if buffers is not None else memoryview(_allocate(size))
    fill = request.scope.get("extensions", {}).get(BODY_INTO)
    if fill is not None:
        await fill(buffer)
        return buffer
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end > size:
            raise UpdateRejected(
                400, "bad_content_length", f"body is longer than its Content-Length of {size}"
            )
        buffer[filled:end] = chunk
        filled = end
    return buffer[:filled]


async def _read_growing(request: Request, limit: int) -> bytearray:
    """Read a body of unknown length (chunked transfer encoding)."""
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise _too_large(len(body) + len(chunk), limit)
        body += chunk
    return body


def _allocate(size: int) -> bytearray | mmap.mmap:
    """Return a writable buffer of `size` bytes; large ones are huge-page-backed if possible."""
    if size < _MAPPED_FROM:
        return bytearray(size)
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux only; elsewhere ordinary pages
        mapping.madvise(mmap.MADV_HUGEPAGE)
    return mapping


def _too_large(size: int, limit: int) -> UpdateRejected:
    return UpdateRejected(
        413, "body_too_large", f"body of {size}+ bytes exceeds the limit of {limit} bytes"
    )
