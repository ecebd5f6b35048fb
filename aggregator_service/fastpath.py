"""Direct uploads: a large POST /receive body goes from the socket straight into its buffer.

Through uvicorn and httptools every body byte is copied several times in user space
(socket to bytes, parser to the request's bytearray, that to a bytes message, that into
the route's buffer). `DirectUploadProtocol` is a uvicorn HTTP protocol that instead hands
the transport the route's own preallocated buffer as its receive buffer (asyncio's
BufferedProtocol), so the kernel copies each byte once, like a raw socket doing recv_into.

It splits the byte stream at request boundaries and looks at each request head. A plain
HTTP/1.1 `POST /receive` of at least 64 KiB with a Content-Length, arriving while the
connection is otherwise idle, is served here: its scope carries the extension
`tributary.body_into`, an `async fill(buffer)` that reads the whole body into `buffer`.
Every other request, and the whole rest of any connection that sends something unusual,
goes to the ordinary uvicorn protocol wrapped inside (fastpath_http.py says what is plain).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from aggregator_service.fastpath_http import (
    BODY_INTO,
    MAX_HEAD_BYTES,
    RequestHead,
    build_scope,
    is_direct_upload,
    parse_head,
)
from aggregator_service.fastpath_upload import DirectUpload

__all__ = ["BODY_INTO", "DirectUploadProtocol", "unsupported_reason"]

SCRATCH_BYTES = 64 * 1024  # receive buffer outside direct bodies (one per connection)
LINGER_S = 5.0  # after refusing a body: how long to wait for more of it before closing

log = logging.getLogger("uvicorn.error")


_INNER_METHODS = (  # what this module calls on uvicorn's protocol (checked at start-up)
    "connection_made",
    "connection_lost",
    "eof_received",
    "data_received",
    "pause_writing",
    "resume_writing",
    "shutdown",
    "_unset_keepalive_if_required",
)


def unsupported_reason() -> str | None:
    """Return why the installed uvicorn cannot host direct uploads, or None if it can.

    The protocol wraps uvicorn's HttpToolsProtocol and uses some of its internals (tested
    with uvicorn 0.54); a uvicorn without them makes the service fall back to plain
    httptools instead of failing on the first request.
    """
    missing = [
        name for name in _INNER_METHODS if not callable(getattr(HttpToolsProtocol, name, None))
    ]
    if missing:
        return f"uvicorn's HttpToolsProtocol has no {', '.join(missing)}"
    return None


class _Mode(enum.Enum):
    HEAD = enum.auto()  # collecting the next request head
    BODY = enum.auto()  # forwarding the body of a request the inner protocol serves
    PASSTHROUGH = enum.auto()  # everything goes to the inner protocol, for good
    DIRECT = enum.auto()  # a direct upload is in progress
    LINGER = enum.auto()  # discarding an unread body before closing


class DirectUploadProtocol(asyncio.BufferedProtocol):
    """A uvicorn HTTP protocol that reads large POST /receive bodies straight into the app's buffer.

    Use it as `uvicorn.Config(app, http=DirectUploadProtocol)`.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inner = HttpToolsProtocol(config, server_state, app_state, _loop)
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = self.inner.loop
        self.access_log = logging.getLogger("uvicorn.access").hasHandlers()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # A memoryview, not the bytearray: asyncio's TLS reader fills `buffer[offset:]`,
        # which for a bytearray would be a copy, and the bytes would be lost.
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))
        self._mode = _Mode.HEAD
        self._head = bytearray()
        self._body_left = 0  # BODY: bytes still to forward; LINGER: bytes still to discard
        self._upload: DirectUpload | None = None
        self._into_upload = False  # the last get_buffer() returned the upload's buffer
        self._timer: asyncio.TimerHandle | None = None

    # asyncio protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the inner protocol; register this one with the server in its place."""
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(self.transport)
        connections = cast(set[Any], self.server_state.connections)
        connections.discard(self.inner)
        connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the inner protocol and any direct upload that the client is gone."""
        self._cancel_timer()
        cast(set[Any], self.server_state.connections).discard(self)
        self.inner.connection_lost(exc)
        if self._upload is not None:
            self._upload.disconnect()

    def eof_received(self) -> bool | None:
        """Let the transport close, as uvicorn does."""
        self.inner.eof_received()
        return None

    def pause_writing(self) -> None:
        """Forward write flow control to the inner protocol (its FlowControl is shared)."""
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        """Forward write flow control to the inner protocol."""
        self.inner.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        """Return the unfilled rest of a direct upload's buffer, else the scratch buffer."""
        space = self._upload.free_space() if self._upload is not None else None
        self._into_upload = space is not None
        return space if space is not None else self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        """Account for `nbytes` written into the buffer that get_buffer() returned."""
        self._cancel_timer()
        self.inner._unset_keepalive_if_required()  # data arrived: no keep-alive expiry
        if self._into_upload and self._upload is not None:
            self._into_upload = False
            self._upload.received(nbytes)
        else:
            self._feed(bytes(self._scratch[:nbytes]))

    # uvicorn server interface

    def shutdown(self) -> None:
        """Close once the current response is done (uvicorn's graceful shutdown)."""
        if self.transport is None or self.transport.get_protocol() is not self:
            cast(set[Any], self.server_state.connections).discard(self)  # e.g. a WebSocket
        elif self._upload is not None:
            self._upload.keep_alive = False
        elif self._mode is _Mode.LINGER:
            self.transport.close()
        else:
            self.inner.shutdown()

    # the request stream

    def _feed(self, data: bytes) -> None:
        """Route received bytes by the current mode."""
        while data and not self.transport.is_closing():
            if self._mode is _Mode.PASSTHROUGH:
                self.inner.data_received(data)
                return
            if self._mode is _Mode.DIRECT and self._upload is not None:
                self._upload.keep(data)
                return
            if self._mode is _Mode.LINGER:
                self._discard(len(data))
                return
            step = self._forward_body if self._mode is _Mode.BODY else self._take_head
            data = step(data)

    def _forward_body(self, data: bytes) -> bytes:
        """Forward the inner request's body bytes; return what follows it."""
        size = min(len(data), self._body_left)
        self.inner.data_received(data[:size])
        self._body_left -= size
        if self._body_left == 0:
            self._mode = _Mode.HEAD
        return data[size:]

    def _take_head(self, data: bytes) -> bytes:
        """Collect a request head and decide who serves it; return the bytes after it."""
        start = max(0, len(self._head) - 3)
        self._head += data
        end = self._head.find(b"\r\n\r\n", start)
        if end < 0 and len(self._head) <= MAX_HEAD_BYTES:
            return b""
        if end < 0 or end + 4 > MAX_HEAD_BYTES:
            return self._pass_through()
        raw, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
        head = parse_head(raw[:-4])
        if head is None:
            return self._pass_through()
        self._head.clear()
        if is_direct_upload(head) and self._inner_idle():
            self._start_upload(head, rest)
            return b""
        self.inner.data_received(raw)
        if head.content_length:
            self._mode, self._body_left = _Mode.BODY, head.content_length
        return rest

    def _pass_through(self) -> bytes:
        """Hand this connection to the inner protocol for good; return the bytes to forward."""
        data = bytes(self._head)
        self._head.clear()
        self._mode = _Mode.PASSTHROUGH
        return data

    def _inner_idle(self) -> bool:
        """Tell whether the inner protocol has no request in progress or queued."""
        cycle = self.inner.cycle
        if cycle is not None and not cycle.response_complete:
            return False
        if self.inner.pipeline or self.transport.is_closing():
            return False
        limit = self.config.limit_concurrency  # over it, uvicorn answers 503
        state = self.server_state
        return limit is None or (len(state.connections) < limit and len(state.tasks) < limit)

    # direct uploads

    def _start_upload(self, head: RequestHead, prefix: bytes) -> None:
        """Serve a direct upload: run the app on a scope that carries `fill`."""
        self.inner.flow.pause_reading()
        upload = DirectUpload(self, head, prefix)
        upload.scope = build_scope(
            head,
            root_path=self.config.root_path,
            asgi_version=self.config.asgi_version,
            server=self.inner.server,
            client=self.inner.client,
            scheme=self.inner.scheme or "http",
            state=self.app_state.copy(),
            extensions={BODY_INTO: upload.fill},
        )
        self._upload, self._mode = upload, _Mode.DIRECT
        work = upload.run(self.config.loaded_app)
        if getattr(self.config, "reset_contextvars", False):
            task = self.loop.create_task(work, context=contextvars.Context())
        else:
            task = self.loop.create_task(work)
        task.add_done_callback(self.server_state.tasks.discard)
        self.server_state.tasks.add(task)

    def upload_done(self, upload: DirectUpload) -> None:
        """Continue after a direct upload's response: next request, or close."""
        self.server_state.total_requests += 1
        self._upload = None
        if self.transport.is_closing():
            return
        if upload.closes:
            self._linger(upload.unread())
            return
        self._mode = _Mode.HEAD
        self.inner.flow.resume_reading()
        if upload.prefix:  # pipelined; not in the app task's context, which is still running
            contextvars.Context().run(self._feed, bytes(upload.prefix))
        else:
            self._timer = self.loop.call_later(self.config.timeout_keep_alive, self._expire)

    def _linger(self, unread: int) -> None:
        """Close, after reading and dropping up to `unread` body bytes still on their way.

        Closing with unread data makes the kernel reset the connection, which can destroy
        the response before the client reads it; so first let the body arrive, for a while.
        """
        if unread <= 0:
            self.transport.close()
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._mode, self._body_left = _Mode.LINGER, unread
        self.inner.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_S, self._expire)

    def _discard(self, nbytes: int) -> None:
        self._body_left -= nbytes
        if self._body_left <= 0:
            self.transport.close()
        else:
            self._timer = self.loop.call_later(LINGER_S, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
