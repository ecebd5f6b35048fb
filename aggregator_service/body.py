"""Reading a request body under a size limit, decided while it streams in."""

from __future__ import annotations

from fastapi import Request

from aggregator_service.state import UpdateRejected

__all__ = ["read_body"]


async def read_body(request: Request, limit: int) -> bytearray:
    """Return the body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise UpdateRejected(400, "bad_content_length", "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise _too_large(len(body) + len(chunk), limit)
        body += chunk
    return body


def _too_large(size: int, limit: int) -> UpdateRejected:
    return UpdateRejected(
        413, "body_too_large", f"body of {size}+ bytes exceeds the limit of {limit} bytes"
    )
