"""One direct upload: its body read into the app's own buffer, its response written.

fastpath.py decides which requests are direct uploads and owns the connection; this
module is the ASGI side of one such request: `fill`, `receive` and `send`, and running
the app with uvicorn's error handling (500 before the response started, close after).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect

from aggregator_service.fastpath_http import (
    RequestHead,
    encode_response_head,
    request_line_for_log,
)

if TYPE_CHECKING:
    from aggregator_service.fastpath import DirectUploadProtocol

__all__ = ["DirectUpload"]

RECEIVE_CHUNK = 1 << 20  # body message size when the app reads through receive()

log = logging.getLogger("uvicorn.error")
access_log = logging.getLogger("uvicorn.access")

_App = Callable[..., Awaitable[None]]
_SERVER_ERROR: list[Mapping[str, Any]] = [
    {
        "type": "http.response.start",
        "status": 500,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"21"),
            (b"connection", b"close"),
        ],
    },
    {"type": "http.response.body", "body": b"Internal Server Error", "more_body": False},
]


class DirectUpload:
    """The ASGI side of one direct POST /receive on a DirectUploadProtocol connection."""

    def __init__(self, conn: DirectUploadProtocol, head: RequestHead, prefix: bytes) -> None:
        self.conn = conn
        self.scope: dict[str, Any] = {}
        self.length = head.content_length
        self.keep_alive = head.keep_alive  # False also once the server shuts down
        self.prefix = bytearray(prefix)  # received, not consumed: body, then what follows it
        self.body_read = 0  # body bytes taken from the connection (prefix or socket)
        self.target: memoryview | None = None  # where the socket writes, while reading
        self.filled = 0  # bytes of `target` written so far
        self.on_data: Callable[[int], None] | None = None  # told `filled` as bytes arrive
        self.reading = False
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.ended = asyncio.Event()  # the response is complete or the client gone
        self.started = False
        self.complete = False
        self.close_after = False
        self.to_send: int | None = None  # response body bytes still due, if declared

    @property
    def closes(self) -> bool:
        """Whether the connection closes after this response."""
        return self.close_after or not self.keep_alive

    def unread(self) -> int:
        """Return how many body bytes the client has yet to send."""
        return max(0, self.length - self.body_read - len(self.prefix))

    # called by the connection

    def free_space(self) -> memoryview | None:
        """Return the unfilled rest of the target buffer, if a read is waiting for data."""
        return None if self.target is None else self.target[self.filled :]

    def received(self, nbytes: int) -> None:
        """Count `nbytes` written into free_space(); wake the reader when the buffer is full."""
        self.filled += nbytes
        self.body_read += nbytes
        if self.on_data is not None:
            self.on_data(self.filled)
        if self.target is not None and self.filled >= len(self.target):
            self.target = None
            self.conn.inner.flow.pause_reading()
            self._wake()

    def keep(self, data: bytes) -> None:
        """Keep bytes that arrived outside a read (the body's start, or the next request)."""
        self.prefix += data
        self.conn.inner.flow.pause_reading()

    def disconnect(self) -> None:
        """Note that the client is gone; wake whoever waits."""
        self.disconnected = True
        self.ended.set()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # the ASGI side

    async def fill(self, buffer: memoryview, on_data: Callable[[int], None] | None = None) -> None:
        """Read the whole body into `buffer` (exactly Content-Length writable bytes).

        `on_data(filled)` is called on the event loop each time more bytes are in, with how
        many bytes of `buffer` are filled from its start. Raise starlette's ClientDisconnect
        if the client goes away first.
        """
        view = buffer.cast("B")
        if view.readonly or view.nbytes != self.length:
            raise ValueError(
                f"the body buffer must be {self.length} writable bytes (the Content-Length), "
                f"got {view.nbytes} {'read-only' if view.readonly else 'writable'} bytes"
            )
        if self.reading or self.body_read:
            raise RuntimeError("the request body is already being read or was read")
        self.on_data = on_data
        try:
            await self._read_into(view)
        finally:
            self.on_data = None

    async def receive(self) -> dict[str, Any]:
        """ASGI receive: the body in messages of up to 1 MiB, then http.disconnect at the end."""
        left = self.length - self.body_read
        if left > 0 and not self.reading and not self.disconnected and not self.complete:
            chunk = bytearray(min(left, RECEIVE_CHUNK))
            try:
                await self._read_into(memoryview(chunk))
            except ClientDisconnect:
                return {"type": "http.disconnect"}
            more = self.body_read < self.length
            return {"type": "http.request", "body": bytes(chunk), "more_body": more}
        await self.ended.wait()
        return {"type": "http.disconnect"}

    async def _read_into(self, view: memoryview) -> None:
        """Fill `view` from the kept bytes, then straight from the socket."""
        if self.disconnected:
            raise ClientDisconnect()
        self.reading = True
        size = min(len(self.prefix), len(view))
        view[:size] = self.prefix[:size]
        del self.prefix[:size]
        self.body_read += size
        self.filled = size
        if size and self.on_data is not None:
            self.on_data(size)
        try:
            if size < len(view):
                self.target = view
                self.waiter = self.conn.loop.create_future()
                self.conn.inner.flow.resume_reading()
                await self.waiter
                if self.target is not None:  # woken by a disconnect
                    raise ClientDisconnect()
        except asyncio.CancelledError:  # give the bytes back: the next read gets them
            self.prefix[:0] = view[: self.filled]
            self.body_read -= self.filled
            raise
        finally:
            self.reading, self.target, self.waiter = False, None, None

    async def send(self, message: Mapping[str, Any]) -> None:
        """ASGI send: write the response; the connection continues or closes at its end."""
        flow = self.conn.inner.flow
        if flow.write_paused and not self.disconnected:
            await flow.drain()
        if self.disconnected or self.conn.transport.is_closing():
            return
        if not self.started:
            self._start_response(message)
        elif not self.complete:
            self._write_body(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {message['type']!r} after the response")

    def _start_response(self, message: Mapping[str, Any]) -> None:
        if message["type"] != "http.response.start":
            raise RuntimeError(f"expected 'http.response.start', got {message['type']!r}")
        status = int(message["status"])
        headers = [*self.conn.server_state.default_headers, *message.get("headers", [])]
        unread_body = self.body_read < self.length or self.reading
        head = encode_response_head(status, headers, close=not self.keep_alive or unread_body)
        self.started, self.close_after, self.to_send = True, head.close, head.content_length
        if self.conn.access_log:
            address, method, path = request_line_for_log(self.scope)
            access_log.info('%s - "%s %s HTTP/1.1" %d', address, method, path, status)
        self.conn.transport.write(head.data)

    def _write_body(self, message: Mapping[str, Any]) -> None:
        if message["type"] != "http.response.body":
            raise RuntimeError(f"expected 'http.response.body', got {message['type']!r}")
        body: bytes = message.get("body", b"")
        if self.to_send is not None:
            if len(body) > self.to_send:
                raise RuntimeError("response content longer than its Content-Length")
            self.to_send -= len(body)
        if body:
            self.conn.transport.write(body)
        if message.get("more_body", False):
            return
        if self.to_send:
            raise RuntimeError("response content shorter than its Content-Length")
        self.complete = True
        self.ended.set()
        self.conn.upload_done(self)

    async def run(self, app: _App) -> None:
        """Run the app on this request; answer 500 or close if it fails, as uvicorn does."""
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:  # uvicorn's rule: any failure ends the request here
            log.error("Exception in ASGI application\n", exc_info=exc)
            await self._fail()
        else:
            if not self.complete and not self.disconnected:
                log.error("ASGI callable returned without completing the response.")
                await self._fail()

    async def _fail(self) -> None:
        if self.started:
            self.conn.transport.close()
            return
        for message in _SERVER_ERROR:
            await self.send(message)
