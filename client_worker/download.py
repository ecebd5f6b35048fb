"""Reading the global model's response body into one preallocated buffer.

The global model (tens of MB) is streamed into one buffer sized from its Content-Length
and decoded from a read-only view of it: the body is never held twice (as a list of
chunks and their joined copy), and the tensors are views of it. A Content-Length over
`MAX_BODY_BYTES` is refused at once; a body shorter or longer than declared is a broken
transfer (`BrokenBody`), which the transport retries like a dropped connection.
"""

from __future__ import annotations

import httpx
import numpy as np

from client_worker.errors import FatalServerError

__all__ = ["MAX_BODY_BYTES", "BrokenBody", "read_body"]

# The largest global model a worker accepts (2 GiB): a larger Content-Length is an error,
# and without one the download stops at this size.
MAX_BODY_BYTES = 2 * 1024**3


class BrokenBody(Exception):
    """A body whose length differs from its Content-Length (a broken transfer, retried)."""


def read_body(response: httpx.Response, what: str) -> memoryview:
    """Read a body into one buffer sized from Content-Length; return a read-only view."""
    declared = _declared_length(response, what)
    if declared is None:
        return _read_chunks(response, what)
    buffer = np.empty(declared, dtype=np.uint8)  # not zeroed: every byte is written below
    view = buffer.data
    filled = 0
    for chunk in response.iter_bytes():
        end = filled + len(chunk)
        if end > declared:
            raise BrokenBody(f"{what}: the body is longer than its Content-Length {declared}")
        view[filled:end] = chunk
        filled = end
    if filled != declared:
        raise BrokenBody(
            f"{what}: the body ended after {filled} of the {declared} bytes of its Content-Length"
        )
    return view.toreadonly()


def _declared_length(response: httpx.Response, what: str) -> int | None:
    """Return the Content-Length of an unencoded body; None when there is none to trust."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    value = response.headers.get("Content-Length")
    if value is None or encoding != "identity":  # an encoded body's length is not its size
        return None
    try:
        declared = int(value)
    except ValueError:
        declared = -1
    if declared < 0:
        raise FatalServerError(response.status_code, f"{what}: invalid Content-Length {value!r}")
    if declared > MAX_BODY_BYTES:
        raise FatalServerError(response.status_code, _too_large(what, f"declares {declared}"))
    return declared


def _read_chunks(response: httpx.Response, what: str) -> memoryview:
    """Read a body of unknown length chunk by chunk, up to `MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise FatalServerError(response.status_code, _too_large(what, f"sent over {total}"))
        chunks.append(chunk)
    return memoryview(b"".join(chunks))


def _too_large(what: str, amount: str) -> str:
    """Return the message of a body over `MAX_BODY_BYTES`."""
    return (
        f"{what}: the answer {amount} bytes, more than the {MAX_BODY_BYTES} bytes "
        "(MAX_BODY_BYTES) a global model may take; check the server URL"
    )
