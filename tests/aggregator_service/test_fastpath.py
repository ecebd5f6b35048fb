"""Direct uploads: a large POST /receive body goes straight into the app's buffer.

Real uvicorn servers with DirectUploadProtocol, on uvloop and on asyncio's own loop, talked
to over raw sockets so that every byte on the wire is the test's choice.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx
import numpy as np
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect, Request

from aggregator_service.app import create_app
from aggregator_service.body import read_body
from aggregator_service.fastpath import BODY_INTO, DirectUploadProtocol
from aggregator_service.settings import AggregatorSettings
from aggregator_service.state import UpdateRejected
from tests.aggregator_service.helpers import (
    MSGPACK,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

LOOPS = ["uvloop", "asyncio"]
TIMEOUT_S = 10.0


def _payload(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _digest(body: bytes) -> dict[str, Any]:
    return {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


class RecordingApp:
    """POST /receive: read the body (through the extension if offered), answer its digest.

    Any other path echoes method, path and body length. `?refuse=N` answers N unread,
    `?crash` fails. `events` records what happened inside.
    """

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = scope["query_string"].decode()
        if query == "crash":
            raise RuntimeError("the test app fails on purpose")
        if query.startswith("refuse="):
            await self._answer(send, int(query.removeprefix("refuse=")), {"refused": True})
            return
        if scope["path"] != "/receive":
            body = await self._read_messages(receive)
            reply = {"method": scope["method"], "path": scope["path"], "length": len(body)}
            await self._answer(send, 200, reply)
            return
        fill = scope.get("extensions", {}).get(BODY_INTO)
        try:
            body = await (self._fill(scope, fill) if fill else self._read_messages(receive))
        except ClientDisconnect:
            self.events.append("disconnect")
            return
        await self._answer(send, 200, _digest(body), direct=fill is not None)

    async def _fill(self, scope: dict[str, Any], fill: Any) -> bytes:
        length = int(dict(scope["headers"])[b"content-length"])
        buffer = bytearray(length)
        self.events.append("fill")
        await fill(memoryview(buffer))
        return bytes(buffer)

    @staticmethod
    async def _read_messages(receive: Any) -> bytes:
        body: bytes = b""
        while True:
            message: dict[str, Any] = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                return body

    @staticmethod
    async def _answer(
        send: Any, status: int, reply: dict[str, Any], *, direct: bool = False
    ) -> None:
        content = json.dumps(reply).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(content)),
        ]
        headers.append((b"x-direct", b"yes" if direct else b"no"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


@dataclass
class Running:
    """A server in a thread, its app and its port."""

    app: RecordingApp
    server: uvicorn.Server
    thread: threading.Thread
    port: int


@contextmanager
def running(*, app: Any = None, loop: str = "uvloop", **options: Any) -> Iterator[Running]:
    """Serve `app` (a RecordingApp by default) with DirectUploadProtocol on a loopback port."""
    recorder = RecordingApp()
    options.setdefault("lifespan", "off")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    http = cast(Any, DirectUploadProtocol)
    config = uvicorn.Config(app or recorder, http=http, loop=loop, log_level="critical", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the server thread ended"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield Running(recorder, server, thread, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module", params=LOOPS)
def served(request: pytest.FixtureRequest) -> Iterator[Running]:
    """One server per event loop, shared by the tests of this module."""
    with running(loop=request.param) as server:
        yield server


@pytest.fixture(scope="module")
def uv_served() -> Iterator[Running]:
    """A server on uvloop (the aggregator's loop)."""
    with running() as server:
        yield server


@contextmanager
def connect(port: int) -> Iterator[tuple[socket.socket, BinaryIO]]:
    """Open a raw connection; yield it and a buffered reader of it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        with sock.makefile("rb") as reader:
            yield sock, cast(BinaryIO, reader)
    finally:
        sock.close()


@dataclass
class Reply:
    """One parsed HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body as JSON."""
        return json.loads(self.body)


def read_reply(reader: BinaryIO) -> Reply:
    """Read one response: Content-Length framed, or up to the end of the connection."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    body = reader.read(int(length)) if length is not None else reader.read()
    return Reply(int(status_line.split()[1]), headers, body)


def request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
    """Encode a Content-Length framed HTTP/1.1 request."""
    lines = [f"{method} {target} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def echo(method: str, path: str, length: int) -> dict[str, Any]:
    """The RecordingApp's reply to a request that is not POST /receive."""
    return {"method": method, "path": path, "length": length}


def test_a_large_upload_arrives_intact_through_the_extension(served: Running) -> None:
    body = _payload(5_000_000, seed=1)
    url = f"http://127.0.0.1:{served.port}/receive"
    reply = httpx.post(url, content=body, timeout=TIMEOUT_S)
    assert reply.status_code == 200
    assert reply.json() == _digest(body)
    assert reply.headers["x-direct"] == "yes"


def test_one_connection_serves_direct_and_ordinary_requests_in_turn(served: Running) -> None:
    first, second = _payload(300_000, seed=2), _payload(65_536, seed=3)
    small = b"s" * 1000
    with connect(served.port) as (sock, reader):
        sock.sendall(request("GET", "/one"))
        assert read_reply(reader).json() == echo("GET", "/one", 0)
        sock.sendall(request("POST", "/receive", first))
        reply = read_reply(reader)
        assert (reply.json(), reply.headers["x-direct"]) == (_digest(first), "yes")
        sock.sendall(request("POST", "/receive", small))  # under 64 KiB: uvicorn reads it
        reply = read_reply(reader)
        assert (reply.json(), reply.headers["x-direct"]) == (_digest(small), "no")
        sock.sendall(request("POST", "/receive?round=2", second))
        reply = read_reply(reader)
        assert (reply.json(), reply.headers["x-direct"]) == (_digest(second), "yes")
        sock.sendall(request("GET", "/two"))
        reply = read_reply(reader)
        assert reply.json() == echo("GET", "/two", 0)
        assert "connection" not in reply.headers  # still kept alive


def test_a_head_sent_one_byte_at_a_time_is_still_served_directly(uv_served: Running) -> None:
    body = _payload(100_000, seed=4)
    data = request("POST", "/receive", body, content_type="application/msgpack")
    head_end = data.index(b"\r\n\r\n") + 4
    with connect(uv_served.port) as (sock, reader):
        for position in range(head_end):
            sock.send(data[position : position + 1])
            time.sleep(0.0005)
        sock.sendall(data[head_end:])
        reply = read_reply(reader)
    assert (reply.json(), reply.headers["x-direct"]) == (_digest(body), "yes")


@pytest.mark.parametrize("send_body", [True, False])
def test_an_answer_without_reading_the_body_closes_the_connection(
    served: Running, send_body: bool
) -> None:
    body = _payload(1_000_000, seed=5)
    data = request("POST", "/receive?refuse=413", body)
    with connect(served.port) as (sock, reader):
        if send_body:  # the whole body, while the answer comes back
            sender = threading.Thread(target=sock.sendall, args=(data,))
            sender.start()
        else:  # the head only, as a client waiting for the answer would
            sock.sendall(data[: data.index(b"\r\n\r\n") + 4])
        reply = read_reply(reader)
        assert reply.status == 413
        assert reply.json() == {"refused": True}
        assert reply.headers["connection"] == "close"
        assert reader.read() == b""  # closed by the server
        if send_body:
            sender.join(TIMEOUT_S)


def test_an_app_failure_answers_500_and_closes(served: Running) -> None:
    with connect(served.port) as (sock, reader):
        sock.sendall(request("POST", "/receive?crash", _payload(70_000, seed=6)))
        reply = read_reply(reader)
        assert (reply.status, reply.body) == (500, b"Internal Server Error")
        assert reader.read() == b""


def test_a_client_gone_mid_body_disconnects_the_app_and_others_are_served(
    served: Running,
) -> None:
    served.app.events.clear()
    data = request("POST", "/receive", _payload(2_000_000, seed=7))
    with connect(served.port) as (sock, _):
        sock.sendall(data[:1_000_000])
        _wait_for(lambda: "fill" in served.app.events)
    _wait_for(lambda: "disconnect" in served.app.events)
    body = _payload(200_000, seed=8)
    with connect(served.port) as (sock, reader):
        sock.sendall(request("POST", "/receive", body))
        assert read_reply(reader).json() == _digest(body)


def test_a_chunked_upload_goes_through_uvicorn(served: Running) -> None:
    body = _payload(200_000, seed=9)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:70_000], body[70_000:])
    )
    head = b"POST /receive HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
    with connect(served.port) as (sock, reader):
        sock.sendall(head + chunks + b"0\r\n\r\n")
        reply = read_reply(reader)
        assert (reply.json(), reply.headers["x-direct"]) == (_digest(body), "no")
        sock.sendall(request("POST", "/receive", body))  # the connection stays uvicorn's
        reply = read_reply(reader)
        assert (reply.json(), reply.headers["x-direct"]) == (_digest(body), "no")


@pytest.mark.parametrize(
    "head",
    [
        b"POST /receive HTTP/1.1\r\nhost: a\r\ncontent-length: 70000\r\nno colon\r\n\r\n",
        b"POST /receive HTTP/1.1\r\ncontent-length: 70000\r\ncontent-length: 70001\r\n\r\n",
        b"NOT A REQUEST\r\n\r\n",
    ],
)
def test_a_malformed_head_gets_uvicorns_400(served: Running, head: bytes) -> None:
    with connect(served.port) as (sock, reader):
        sock.sendall(head)
        reply = read_reply(reader)
        assert (reply.status, reply.body) == (400, b"Invalid HTTP request received.")


def test_graceful_shutdown_lets_a_direct_upload_finish() -> None:
    body = _payload(1_000_000, seed=10)
    data = request("POST", "/receive", body)
    with running() as served, connect(served.port) as (sock, reader):
        sock.sendall(data[:500_000])
        _wait_for(lambda: "fill" in served.app.events)
        served.server.should_exit = True
        time.sleep(0.3)  # the server is shutting down meanwhile
        sock.sendall(data[500_000:])
        reply = read_reply(reader)
        assert reply.json() == _digest(body)
        assert reply.headers["connection"] == "close"
        served.thread.join(TIMEOUT_S)
        assert not served.thread.is_alive()


def test_keep_alive_expiry_spares_uploads_and_closes_idle_connections() -> None:
    body = _payload(200_000, seed=11)
    data = request("POST", "/receive", body)
    with running(timeout_keep_alive=1) as served, connect(served.port) as (sock, reader):
        sock.sendall(request("GET", "/first"))
        assert read_reply(reader).status == 200
        for start in range(0, len(data), 25_000):  # 1.6 s, longer than the keep-alive
            sock.sendall(data[start : start + 25_000])
            time.sleep(0.2)
        reply = read_reply(reader)
        assert (reply.json(), reply.headers["x-direct"]) == (_digest(body), "yes")
        started = time.monotonic()
        assert reader.read() == b""  # idle after a direct upload: closed at the expiry
        assert 0.5 < time.monotonic() - started < 5


def _stream() -> tuple[bytes, list[dict[str, Any]]]:
    """Five pipelined requests, and the replies they must get (derived from the bodies)."""
    first, second, small = _payload(100_000, seed=12), _payload(70_000, seed=13), b"q" * 3000
    data = b"".join(
        [
            request("GET", "/first"),
            request("POST", "/receive", first),
            request("POST", "/echo", small),
            request("POST", "/receive?x=1", second, connection="keep-alive"),
            request("GET", "/last"),
        ]
    )
    replies = [
        echo("GET", "/first", 0),
        _digest(first),
        echo("POST", "/echo", 3000),
        _digest(second),
        echo("GET", "/last", 0),
    ]
    return data, replies


STREAM, STREAM_REPLIES = _stream()


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, len(STREAM) - 1), max_size=12, unique=True))
def test_any_split_of_a_request_stream_gets_the_same_replies(
    uv_served: Running, cuts: list[int]
) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    with connect(uv_served.port) as (sock, reader):
        for start, end in itertools.pairwise(bounds):
            sock.sendall(STREAM[start:end])
            time.sleep(0.002)
        replies = [read_reply(reader).json() for _ in STREAM_REPLIES]
    assert replies == STREAM_REPLIES


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    work = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    return work / "cert.pem", work / "key.pem"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_direct_upload_over_tls_arrives_intact(certificate: tuple[Path, Path], loop: str) -> None:
    cert, key = certificate
    body = _payload(5_000_000, seed=14)
    context = ssl.create_default_context(cafile=cert)
    with running(loop=loop, ssl_certfile=cert, ssl_keyfile=key) as served:
        url = f"https://127.0.0.1:{served.port}/receive"
        with httpx.Client(verify=context, timeout=TIMEOUT_S) as client:
            replies = [client.post(url, content=body) for _ in range(2)]
    for reply in replies:
        assert reply.status_code == 200
        assert (reply.json(), reply.headers["x-direct"]) == (_digest(body), "yes")


def test_the_aggregator_reads_an_update_through_the_extension(tmp_path: Path) -> None:
    app = create_app(AggregatorSettings(state_dir=tmp_path / "state"), experiment())
    filled: list[int] = []

    async def counting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        fill = scope.get("extensions", {}).get(BODY_INTO)
        if fill is not None:

            async def counted(buffer: memoryview, on_data: Any = None) -> None:
                filled.append(buffer.nbytes)
                await fill(buffer, on_data)

            scope = {**scope, "extensions": {BODY_INTO: counted}}
        await app(scope, receive, send)

    with running(app=counting, lifespan="on") as served:
        url = f"http://127.0.0.1:{served.port}"
        with httpx.Client(base_url=url, timeout=TIMEOUT_S) as http:
            client = cast(Any, http)  # the helpers take a TestClient, an httpx.Client too
            register(client, "a", "b")
            wait_for(client, lambda status: status["phase"] == "training")
            _, weights = global_model(client)
            body = update_body("a", 1, weights)
            reply = http.post("/receive", content=body, headers=MSGPACK)
    assert reply.status_code == 200, reply.text
    assert reply.json()["accepted"] is True
    assert filled == [len(body)]


def _scope(length: int, fill: Any) -> dict[str, Any]:
    headers = [(b"content-length", str(length).encode())]
    return {"type": "http", "method": "POST", "path": "/receive", "headers": headers,
            "query_string": b"", "extensions": {BODY_INTO: fill}}  # fmt: skip


def test_read_body_hands_its_buffer_to_the_extension() -> None:
    given_buffers: list[int] = []

    async def fill(buffer: memoryview, on_data: Any) -> None:
        given_buffers.append(buffer.nbytes)
        buffer[:] = bytes(range(10)) * 7000

    body = asyncio.run(read_body(Request(_scope(70_000, fill)), limit=1 << 20))
    assert given_buffers == [70_000]
    assert bytes(body) == bytes(range(10)) * 7000


def test_read_body_refuses_an_oversized_body_before_filling() -> None:
    async def fill(buffer: memoryview, on_data: Any) -> None:
        raise AssertionError("a refused body must not be read")

    with pytest.raises(UpdateRejected) as info:
        asyncio.run(read_body(Request(_scope(2 << 20, fill)), limit=1 << 20))
    assert info.value.status == 413


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
