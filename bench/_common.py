"""Helpers of the aggregator benchmarks: a server process, its memory, clients, tables.

The aggregator runs as its own process (``python -m aggregator_service``) so that its
memory can be read from ``/proc/<pid>/status`` apart from the clients' and so that the
clients do not share its interpreter lock. Timed uploads use the standard library's
``http.client``, which hands the whole body to ``socket.sendall`` without copying it.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from shared.runs.service import local_aggregator
from shared.wire import decode_message, decode_weights, encode_message

__all__ = [
    "MIB",
    "REPO_ROOT",
    "Aggregator",
    "CpuUse",
    "Upload",
    "encode_update",
    "fetch_model",
    "get_json",
    "machine_busy_seconds",
    "machine_line",
    "markdown_table",
    "measure_cpu",
    "post_update",
    "process_cpu_seconds",
    "read_memory",
    "register_clients",
    "reset_peak",
    "running_aggregator",
    "wait_for_status",
]

MIB = 1 << 20
T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
_MSGPACK = "application/msgpack"


@dataclass(frozen=True)
class Aggregator:
    """A running aggregator process and where it listens."""

    pid: int
    host: str
    port: int
    log_path: Path


@dataclass(frozen=True)
class Upload:
    """One timed POST /receive: status and perf_counter times of its first byte and reply."""

    status: int
    started: float
    finished: float


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used during a measurement by the server, by this process, and by the rest."""

    server: float
    client: float
    others: float


# ------------------------------------------------------------------ the server process


@contextmanager
def running_aggregator(
    *,
    state_dir: Path,
    num_clients: int,
    num_rounds: int,
    persist_updates: bool,
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 120.0,
) -> Iterator[Aggregator]:
    """Run a ResNet18 aggregator for `num_clients` clients until the block ends, then stop it."""
    overrides = {
        "model": "resnet18",
        "dataset": "synthetic",
        "server_eval": "false",
        "fraction_fit": "1.0",
        "min_fit_clients": str(num_clients),
        "min_available_clients": str(num_clients),
        "num_rounds": str(num_rounds),
        "round_timeout_s": "600",
    }
    items = [f"{key}={value}" for key, value in overrides.items()]
    flags = [] if persist_updates else ["--no-persist-updates"]
    started = local_aggregator(state_dir, *items, flags=flags, env=env, timeout_s=startup_timeout_s)
    with started as (url, child):
        address = urlsplit(url)
        yield Aggregator(child.pid, str(address.hostname), int(address.port or 0), child.log_path)


def read_memory(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of process `pid`, in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def process_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process `pid` (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """Return the CPU seconds all cores of the machine have been busy since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measure_cpu(server_pid: int | None, action: Callable[[], T]) -> tuple[T, CpuUse]:
    """Run `action` and return its result with the CPU time used meanwhile, split by whom."""
    server_before = process_cpu_seconds(server_pid) if server_pid is not None else 0.0
    own_before = sum(os.times()[:2])
    busy_before = machine_busy_seconds()
    result = action()
    busy = machine_busy_seconds() - busy_before
    own = sum(os.times()[:2]) - own_before
    server = process_cpu_seconds(server_pid) - server_before if server_pid is not None else 0.0
    return result, CpuUse(server, own, max(busy - server - own, 0.0))


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# ------------------------------------------------------------------------ the clients


def _request(
    server: Aggregator,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def get_json(server: Aggregator, path: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """GET a JSON document from the aggregator; raise on a non-200 answer."""
    status, content = _request(server, "GET", path, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {content[:300]!r}")
    document: dict[str, Any] = json.loads(content)
    return document


def register_clients(server: Aggregator, client_ids: Sequence[str]) -> None:
    """POST /register for each client id."""
    for client_id in client_ids:
        payload = json.dumps({"client_id": client_id, "num_examples": 10}).encode()
        status, content = _request(
            server, "POST", "/register", body=payload, headers={"content-type": "application/json"}
        )
        if status != 200:
            raise RuntimeError(f"register {client_id} answered {status}: {content[:300]!r}")


def wait_for_status(
    server: Aggregator, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 120.0
) -> dict[str, Any]:
    """Poll /status until `predicate` holds; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = get_json(server, "/status")
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"the aggregator did not reach the awaited state; last: {status}")
        time.sleep(0.05)


def fetch_model(server: Aggregator, client_id: str) -> dict[str, np.ndarray]:
    """GET /get_weights as `client_id` and decode the global model."""
    path = f"/get_weights?client_id={client_id}"
    status, content = _request(server, "GET", path, headers={"accept": _MSGPACK})
    if status != 200:
        raise RuntimeError(f"GET /get_weights answered {status}: {content[:300]!r}")
    return decode_weights(decode_message(content)["weights"])


def encode_update(client_id: str, server_round: int, weights: Mapping[str, np.ndarray]) -> bytes:
    """Encode the POST /receive body of one client's update (docs/protocol.md)."""
    message = {
        "protocol": 1,
        "client_id": client_id,
        "round": server_round,
        "num_examples": 10,
        "weights": dict(weights),
        "metrics": {"train_loss": 0.5},
    }
    return encode_message(message)


def post_update(
    server: Aggregator, body: bytes, *, start: threading.Barrier | None = None
) -> Upload:
    """POST one update on a fresh connection (opened before `start` is passed) and time it."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=300)
    try:
        connection.connect()
        if start is not None:
            start.wait()
        started = time.perf_counter()
        headers = {"content-type": _MSGPACK, "content-length": str(len(body))}
        connection.request("POST", "/receive", body=body, headers=headers)
        reply = connection.getresponse()
        content = reply.read()
        finished = time.perf_counter()
    finally:
        connection.close()
    if reply.status != 200:
        raise RuntimeError(f"POST /receive answered {reply.status}: {content[:300]!r}")
    return Upload(reply.status, started, finished)


# ---------------------------------------------------------------------------- reporting


def resnet18_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The seeded initial ResNet18 state the benchmarks move around (CIFAR shape, 44.7 MB)."""
    from shared.models import init_global_weights  # imports torch: only when needed

    return init_global_weights("resnet18", seed=seed, in_channels=3, num_classes=10, image_size=32)


def machine_line() -> str:
    """Describe the machine: cores, CPU model, Python, glibc tunables, load average now."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    tunables = os.environ.get("GLIBC_TUNABLES", "unset")
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"Linux {platform.release()}, GLIBC_TUNABLES {tunables}, load average {load}"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
