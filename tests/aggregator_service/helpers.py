"""Helpers for aggregator tests: an app on a temporary state dir, and update builders."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from aggregator_service.store import journal
from shared.config import ExperimentConfig, load_config
from shared.runs.service import local_aggregator
from shared.wire import decode_message, decode_weights, encode_message

MSGPACK = {"content-type": "application/msgpack"}


def _direct_io_works(directory: Path) -> bool:
    """Whether files in `directory` can be opened with O_DIRECT."""
    if not journal.O_DIRECT:
        return False
    probe = directory / ".probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | journal.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


needs_direct_io = pytest.mark.skipif(
    not _direct_io_works(Path(os.environ.get("TMPDIR", "/tmp"))),
    reason="the test filesystem refuses O_DIRECT (streaming falls back: tested too)",
)


def experiment(**overrides: Any) -> ExperimentConfig:
    """A small, fast experiment: the 2NN on mnist5k shapes, no server-side evaluation."""
    base: dict[str, Any] = {
        "num_rounds": 2,
        "min_fit_clients": 2,
        "min_available_clients": 2,
        "server_eval": False,
        "round_timeout_s": 30.0,
    }
    return load_config(overrides={**base, **overrides})


AppFactory = Callable[..., TestClient]


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[AppFactory]:
    """Start aggregators on tmp_path/state (each client is closed at teardown)."""
    clients: list[TestClient] = []

    def start(
        config: ExperimentConfig | None = None, state_dir: Path | None = None, **settings: Any
    ) -> TestClient:
        app_settings = AggregatorSettings(state_dir=state_dir or tmp_path / "state", **settings)
        client = TestClient(create_app(app_settings, config or experiment()))
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def register(client: httpx.Client, *client_ids: str, num_examples: int = 10) -> None:
    """Register clients and assert each was accepted (a TestClient or a client of a server)."""
    for client_id in client_ids:
        reply = client.post(
            "/register", json={"client_id": client_id, "num_examples": num_examples}
        )
        assert reply.status_code == 200, reply.text


def wait_for(
    client: httpx.Client, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    """Poll /status until predicate holds (the loop runs in its own thread)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get("/status").json()
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"timed out; last status {status}"
        time.sleep(0.02)


def global_model(client: httpx.Client) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fetch and decode GET /get_weights."""
    reply = client.get("/get_weights")
    assert reply.status_code == 200, reply.text
    message = decode_message(reply.content)
    return message, decode_weights(message["weights"])


def update_body(
    client_id: str,
    server_round: int,
    weights: Mapping[str, Any],
    num_examples: int = 10,
    **fields: Any,
) -> bytes:
    """Encode a POST /receive body (tensors as arrays, or as compressed tensor maps)."""
    message = {
        "protocol": 1,
        "client_id": client_id,
        "round": server_round,
        "num_examples": num_examples,
        "weights": dict(weights),
        "metrics": {"train_loss": 0.5},
    }
    message.update(fields)
    return encode_message(message)


def shifted(weights: Mapping[str, np.ndarray], delta: float) -> dict[str, np.ndarray]:
    """Return weights with `delta` added to every floating tensor."""
    return {
        name: (a + delta).astype(a.dtype) if a.dtype.kind == "f" else a.copy()
        for name, a in weights.items()
    }


@contextmanager
def aggregator_process(
    state_dir: Path,
    *overrides: str,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `python -m aggregator_service` on a free port; yield its URL and process."""
    started = local_aggregator(state_dir, *overrides, flags=flags, env=env, timeout_s=timeout)
    with started as (url, child):
        yield url, child.process
