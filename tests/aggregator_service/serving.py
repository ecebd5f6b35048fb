"""A real uvicorn server in a thread (HTTP or HTTPS), and a tokens file, for security tests."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn


@contextmanager
def serve(
    app: Any,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    http: Any = "auto",
    port: int = 0,
    **options: Any,
) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve `app` on a loopback port (HTTPS with a cert); yield its URL and the server.

    `port` 0 picks a free one; `http` is uvicorn's HTTP protocol ("h11", "httptools" or
    "auto"); `options` go to `uvicorn.Config` (e.g. timeout_keep_alive).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        http=http,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread ended"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    scheme = "https" if certfile is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def write_tokens(path: Path, *client_ids: str) -> dict[str, str]:
    """Write a tokens file with a strong (derived, reproducible) token per client; return them."""
    tokens = {
        cid: hashlib.sha256(f"test token of {cid}".encode()).hexdigest() for cid in client_ids
    }
    lines = ["# client_id: token", *(f"{cid}: {token}" for cid, token in tokens.items())]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return tokens


def bearer(token: str) -> dict[str, str]:
    """Return the Authorization header of `token`."""
    return {"Authorization": f"Bearer {token}"}
