"""HTTP/1.1 pieces of the direct upload path: strict request heads, scopes, response heads.

The parser here accepts only the plainest requests. Everything else (chunked bodies,
upgrades, HTTP/1.0, folded or duplicated framing headers, stray control characters) is
reported as not understood, and the connection is then left entirely to uvicorn, which
answers it correctly. Being strict keeps this parser and uvicorn's in agreement on where
each request ends.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

__all__ = [
    "BODY_INTO",
    "DIRECT_MIN_BYTES",
    "MAX_HEAD_BYTES",
    "RequestHead",
    "ResponseHead",
    "build_scope",
    "encode_response_head",
    "is_direct_upload",
    "parse_head",
    "request_line_for_log",
]

BODY_INTO = "tributary.body_into"  # scope["extensions"] key of `async fill(buffer)`
MAX_HEAD_BYTES = 64 * 1024  # a longer head goes to uvicorn
DIRECT_MIN_BYTES = 64 * 1024  # smaller uploads are not worth a direct read
DIRECT_PATH = b"/receive"
_MAX_LENGTH_DIGITS = 18  # fits in int64, as uvicorn's parser requires

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_FRAMING = (b"transfer-encoding", b"upgrade")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head this module fully understands (HTTP/1.1, Content-Length framing)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values without surrounding space
    content_length: int  # 0 when the header is absent
    keep_alive: bool  # False when the client sent `Connection: close`
    expects: bool  # an Expect header was sent


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """An encoded status line and headers, and what they say about the body."""

    data: bytes
    content_length: int | None  # None: the body runs until the connection closes
    close: bool  # the connection closes after this response


def parse_head(head: bytes) -> RequestHead | None:
    """Parse a request head (without its final blank line); None if it is not plain HTTP/1.1."""
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    method, target = parts[0], parts[1]
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        return None
    headers = _parse_fields(lines[1:])
    if headers is None:
        return None
    return _framed(method, target, headers)


def _parse_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]] | None:
    """Split `name: value` lines; None on folding, bad names or control characters."""
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return None
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            return None
        headers.append((name.lower(), value))
    return headers


def _framed(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> RequestHead | None:
    """Work out the body length and connection options; None if they are unusual."""
    names = [name for name, _ in headers]
    if any(name in _FRAMING for name in names):
        return None
    lengths = [value for name, value in headers if name == b"content-length"]
    if len(lengths) > 1:
        return None
    if lengths and not (lengths[0].isdigit() and len(lengths[0]) <= _MAX_LENGTH_DIGITS):
        return None
    options = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    if b"upgrade" in options:
        return None
    return RequestHead(
        method=method,
        target=target,
        headers=headers,
        content_length=int(lengths[0]) if lengths else 0,
        keep_alive=b"close" not in options,
        expects=b"expect" in names,
    )


def is_direct_upload(head: RequestHead) -> bool:
    """Tell whether a request is a large POST /receive that may be read straight into a buffer."""
    path, _, _ = head.target.partition(b"?")
    return (
        head.method == b"POST"
        and path == DIRECT_PATH
        and b"#" not in head.target
        and head.content_length >= DIRECT_MIN_BYTES
        and not head.expects
    )


def build_scope(
    head: RequestHead,
    *,
    root_path: str,
    asgi_version: str,
    server: tuple[str, int | None] | None,
    client: tuple[str, int] | None,
    scheme: str,
    state: dict[str, Any],
    extensions: dict[str, Any],
) -> dict[str, Any]:
    """Return the ASGI http scope of a direct upload, as uvicorn would build it."""
    raw_path, _, query = head.target.partition(b"?")
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    return {
        "type": "http",
        "asgi": {"version": asgi_version, "spec_version": "2.3"},
        "http_version": "1.1",
        "server": server,
        "client": client,
        "scheme": scheme,
        "method": head.method.decode("ascii"),
        "root_path": root_path,
        "path": root_path + path,
        "raw_path": root_path.encode("ascii") + raw_path,
        "query_string": query,
        "headers": head.headers,
        "state": state,
        "extensions": extensions,
    }


def encode_response_head(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    close: bool,
) -> ResponseHead:
    """Encode a status line and headers; add `connection: close` when the connection must close.

    Raise RuntimeError on a status or header that cannot be sent, as uvicorn does.
    """
    if not 100 <= status <= 599:
        raise RuntimeError(f"cannot send the HTTP status {status!r}")
    content = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
    content_length: int | None = None
    for raw_name, value in headers:
        name = raw_name.lower()
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise RuntimeError(f"invalid response header {raw_name!r}: {value!r}")
        if name == b"content-length" and content_length is None:
            if not value.strip().isdigit():
                raise RuntimeError(f"invalid response content-length {value!r}")
            content_length = int(value)
        elif name == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]:
            close = True
            name = b""  # written once below
        if name:
            content += [name, b": ", value, b"\r\n"]
    close = close or content_length is None
    if close:
        content.append(b"connection: close\r\n")
    content.append(b"\r\n")
    return ResponseHead(data=b"".join(content), content_length=content_length, close=close)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def request_line_for_log(scope: dict[str, Any]) -> tuple[str, str, str]:
    """Return the client address, method and quoted path?query of a scope, for access logs."""
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else ""
    path = urllib.parse.quote(scope["path"])
    if scope["query_string"]:
        path = f"{path}?{scope['query_string'].decode('ascii')}"
    return address, scope["method"], path
