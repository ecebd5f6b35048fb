"""Aggregator ingest throughput: N clients posting ResNet18 updates at once over loopback HTTP.

Each repetition is one round of an aggregator process (``python -m aggregator_service``)
with N clients. The N updates of the round are encoded first; then, with those same bytes
and right before the round's uploads, the baselines of that repetition are measured:

- raw TCP: N threads each send one body (after an 8-byte length) over loopback to a plain
  socket sink in another process (4 MiB socket buffers, a 4 MiB receive buffer per
  connection); from the first byte sent to the last one-byte acknowledgement, sent once
  the sink has read every byte;
- HTTP read only: the same uploads to a stand-in server process running the service's
  HTTP stack (uvicorn with httptools, as the service runs, FastAPI, the service's
  `read_body` under the service's upload slots, `UploadGate`) that answers 200 once the
  body is read and does nothing with it;
- raw fsync write (persistence on only): the N bodies written to the state dir's
  filesystem one after the other, each file fsynced, as the store did with an update;
- raw direct write (persistence on only): the same, with O_DIRECT from page-aligned copies
  of the bodies (the disk without the page cache, as the store now writes an update).

Then ingest: N threads each POST their update at the same moment; from the first byte
sent to the last 200 reply. Once with ``--no-persist-updates`` and once with persistence
on. Bodies arrive through the ASGI receive stream (uvicorn's httptools protocol).
Ratios are taken per repetition (ingest over the baseline measured just before it), so a
burst of load from elsewhere on the machine hits both sides of a ratio alike.

GB/s means 1e9 bytes per second. The CPU columns split the CPU seconds used during each
measurement between the server (or sink), this process (the clients) and the rest of the
machine (other processes, kernel threads, interrupts).
Run: ``.venv/bin/python bench/bench_ingest.py [--clients 10] [--repeats 5] [--upload-slots 2]``.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import mmap
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvicorn
from _common import (
    Aggregator,
    CpuUse,
    encode_update,
    fetch_model,
    machine_line,
    markdown_table,
    measure_cpu,
    post_update,
    register_clients,
    running_aggregator,
    wait_for_status,
)
from fastapi import FastAPI, Request

from aggregator_service.api.body import read_body
from aggregator_service.api.limits import UploadGate
from aggregator_service.settings import AggregatorSettings

__all__ = [
    "Timing",
    "direct_write",
    "fsync_write",
    "ingest_rounds",
    "main",
    "post_together",
    "raw_tcp",
    "report",
    "run",
]

SOCKET_BUFFER = 4 << 20
UPLOAD_SLOTS = AggregatorSettings().max_concurrent_uploads  # the service's default
RAW_TCP, HTTP_READ, INGEST_OFF = "raw TCP", "HTTP read only", "ingest, persistence off"
RAW_WRITE, INGEST_ON = "raw fsync write", "ingest, persistence on"
RAW_DIRECT = "raw direct write"
ALIGNMENT = 4096  # O_DIRECT: address and length in multiples of this
# The strategy's seconds per round (/history aggregate_s: the fold of the round's
# journalled updates, after the uploads), by state dir name.
AGGREGATE_SECONDS: dict[str, list[float]] = {}
Span = tuple[float, float]  # perf_counter at the first byte sent, at the reply
Measure = Callable[[Sequence[bytes]], None]


@dataclass(frozen=True)
class Timing:
    """One timed transfer: bytes, wall seconds, and who used the CPU meanwhile."""

    nbytes: int
    seconds: float
    cpu: CpuUse

    @property
    def gbps(self) -> float:
        """Throughput in 1e9 bytes per second."""
        return self.nbytes / self.seconds / 1e9


def _concurrently(
    count: int, send: Callable[[int, threading.Barrier], Span], nbytes: int, pid: int | None
) -> Timing:
    """Run `send(i, start)` in `count` threads released together; first start to last reply."""
    start = threading.Barrier(count, timeout=120)

    def run_all() -> list[Span]:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda i: send(i, start), range(count)))

    spans, cpu = measure_cpu(pid, run_all)
    seconds = max(end for _, end in spans) - min(begin for begin, _ in spans)
    return Timing(nbytes, seconds, cpu)


@contextmanager
def _spawned(target: Callable[[Connection, int], None], arg: int) -> Iterator[tuple[int, int]]:
    """Run `target(pipe, arg)` in a fresh process until the block ends; yield (pid, port)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(child, arg), daemon=True)
    process.start()
    try:
        if not parent.poll(60) or process.pid is None:
            raise TimeoutError(f"{target.__name__} did not start within 60 s")
        yield process.pid, int(parent.recv())
    finally:
        process.terminate()
        process.join(10)


# --------------------------------------------------------------------------- raw TCP


def _tcp_sink(reply: Connection, buffer_size: int) -> None:
    """Accept connections forever; each sends an 8-byte length, then that many bytes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    reply.send(listener.getsockname()[1])
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_drain, args=(connection, buffer_size), daemon=True).start()


def _drain(connection: socket.socket, buffer_size: int) -> None:
    """Read one length-prefixed transfer, then acknowledge it with one byte."""
    view = memoryview(bytearray(buffer_size))
    with connection:
        header = connection.recv(8, socket.MSG_WAITALL)
        remaining = int.from_bytes(header, "big") if len(header) == 8 else 0
        while remaining > 0:
            count = connection.recv_into(view, min(remaining, buffer_size))
            if count == 0:
                return
            remaining -= count
        connection.sendall(b"k")


def raw_tcp(sink: tuple[int, int], bodies: Sequence[bytes]) -> Timing:
    """Send each body from its own thread to the sink (pid, port), all at once; time it."""
    pid, port = sink

    def send(i: int, start: threading.Barrier) -> Span:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sender:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            start.wait()
            began = time.perf_counter()
            sender.sendall(len(bodies[i]).to_bytes(8, "big"))
            sender.sendall(bodies[i])
            if sender.recv(1) != b"k":
                raise RuntimeError("the TCP sink closed a connection before reading every byte")
            return began, time.perf_counter()

    return _concurrently(len(bodies), send, sum(len(b) for b in bodies), pid)


# -------------------------------------------------------------------- HTTP read only


def _read_only_app(upload_slots: int) -> FastAPI:
    """An app whose POST /receive reads the body as the aggregator's does, then answers."""
    app = FastAPI()
    gate = UploadGate(slots=upload_slots, max_waiting=1000)

    @app.post("/receive")
    async def receive(request: Request) -> dict[str, int]:
        async with gate.admit() as slot:  # the service's slots, which hand body buffers on
            body = await read_body(request, 1 << 30, slot.take)
            return {"received": len(body)}

    return app


def _http_sink(reply: Connection, upload_slots: int) -> None:
    """Serve the read-only app on a free loopback port, sent back through `reply`."""
    app = _read_only_app(upload_slots)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)  # connections wait in the backlog until the server accepts them
    reply.send(listener.getsockname()[1])
    config = uvicorn.Config(app, log_level="warning", http="httptools")
    uvicorn.Server(config).run(sockets=[listener])


def post_together(server: Aggregator, bodies: Sequence[bytes]) -> Timing:
    """POST /receive each body from its own thread, all released at once; time the lot."""

    def send(i: int, start: threading.Barrier) -> Span:
        upload = post_update(server, bodies[i], start=start)
        return upload.started, upload.finished

    return _concurrently(len(bodies), send, sum(len(b) for b in bodies), server.pid)


# ------------------------------------------------------------------------ raw write


def fsync_write(directory: Path, bodies: Sequence[bytes]) -> Timing:
    """Write each body to its own file in `directory`, one after the other, each fsynced."""

    def write(path: Path, body: bytes) -> None:
        with open(path, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())

    return _timed_writes(directory, bodies, write)


def direct_write(directory: Path, bodies: Sequence[bytes]) -> Timing:
    """Like `fsync_write`, with O_DIRECT from page-aligned copies (made before the clock)."""
    copies = []
    for body in bodies:
        mapping = mmap.mmap(-1, len(body), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mapping[:] = body
        copies.append(mapping)

    def write(path: Path, body: mmap.mmap) -> None:
        view = memoryview(body)
        aligned = len(view) - len(view) % ALIGNMENT
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        try:
            done = 0
            while done < aligned:
                done += os.write(fd, view[done:aligned])
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            while done < len(view):
                done += os.write(fd, view[done:])
            os.fsync(fd)
        finally:
            os.close(fd)
            view.release()

    try:
        return _timed_writes(directory, copies, write)
    finally:
        for mapping in copies:
            mapping.close()


def _timed_writes(
    directory: Path, bodies: Sequence[Any], write: Callable[[Path, Any], None]
) -> Timing:
    paths = [directory / f"raw-write-{i}.bin" for i in range(len(bodies))]

    def write_all() -> None:
        for path, body in zip(paths, bodies, strict=True):
            write(path, body)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    began = time.perf_counter()
    _, cpu = measure_cpu(None, write_all)
    timing = Timing(sum(len(b) for b in bodies), time.perf_counter() - began, cpu)
    for path in paths:
        path.unlink()
    return timing


# --------------------------------------------------------------------------- ingest


def ingest_rounds(
    state_dir: Path,
    *,
    clients: int,
    repeats: int,
    persist: bool,
    before_each: Measure,
    env: dict[str, str] | None = None,
) -> tuple[list[Timing], int]:
    """Run an aggregator for `repeats` rounds of `clients` uploads; return their timings.

    `before_each(bodies)` runs before each round's uploads, with that round's bodies.
    """
    client_ids = [f"client-{i:03d}" for i in range(clients)]  # fixed width: equal body sizes
    with running_aggregator(
        state_dir=state_dir,
        num_clients=clients,
        num_rounds=repeats,
        persist_updates=persist,
        env=env,
    ) as server:
        register_clients(server, client_ids)
        wait_for_status(server, lambda s: s["phase"] == "training")
        for client_id in client_ids:  # every client fetches the model once
            weights = fetch_model(server, client_id)
        timings = []
        for server_round in range(1, repeats + 1):
            wait_for_status(server, functools.partial(_training, server_round=server_round))
            bodies = [encode_update(cid, server_round, weights) for cid in client_ids]
            before_each(bodies)
            timings.append(post_together(server, bodies))
            closed = wait_for_status(server, functools.partial(_closed, server_round=server_round))
            AGGREGATE_SECONDS.setdefault(state_dir.name, []).append(
                closed["last_round"]["aggregate_s"]
            )
    return timings, len(bodies[0])


def _closed(status: dict[str, Any], *, server_round: int) -> bool:
    last = status.get("last_round") or {}
    return bool(last.get("round") == server_round)


def _training(status: dict[str, Any], *, server_round: int) -> bool:
    return bool(status["round"] == server_round and status["phase"] == "training")


# --------------------------------------------------------------------------- report


def _row(name: str, timings: Sequence[Timing]) -> list[str]:
    rates = [t.gbps for t in timings]
    cells = [
        statistics.median(t.seconds for t in timings),
        statistics.median(t.cpu.server for t in timings),
        statistics.median(t.cpu.client for t in timings),
        statistics.median(t.cpu.others for t in timings),
    ]
    return [name, f"{max(rates):.3f}", f"{statistics.median(rates):.3f}"] + [
        f"{c:.2f}" for c in cells
    ]


def _ratio_row(results: dict[str, list[Timing]], top: str, bottom: str) -> list[str]:
    ratios = [a.gbps / b.gbps for a, b in zip(results[top], results[bottom], strict=True)]
    return [f"{top} / {bottom}", f"{max(ratios):.2f}", f"{statistics.median(ratios):.2f}"]


def report(results: dict[str, list[Timing]]) -> str:
    """Render the figures, the per-repetition ratios and every repetition as Markdown tables."""
    header = ["transfer", "best GB/s", "median GB/s", "median s"]
    header += ["server CPU s", "client CPU s", "rest CPU s"]
    names = [RAW_TCP, HTTP_READ, INGEST_OFF, RAW_WRITE, RAW_DIRECT]
    names.append(INGEST_ON)
    ratios = [
        _ratio_row(results, INGEST_OFF, RAW_TCP),
        _ratio_row(results, HTTP_READ, RAW_TCP),
        _ratio_row(results, INGEST_OFF, HTTP_READ),
        _ratio_row(results, INGEST_ON, RAW_WRITE),
        _ratio_row(results, INGEST_ON, RAW_DIRECT),
    ]
    repetitions = [[name, " ".join(f"{t.gbps:.2f}" for t in results[name])] for name in names]
    folds = [
        [state, f"{statistics.median(seconds):.3f}", f"{min(seconds):.3f}"]
        for state, seconds in sorted(AGGREGATE_SECONDS.items())
    ]
    return "\n\n".join(
        [
            markdown_table(header, [_row(name, results[name]) for name in names]),
            markdown_table(["ratio (per repetition)", "best", "median"], ratios),
            markdown_table(["transfer", "GB/s in each repetition"], repetitions),
            markdown_table(["state dir", "aggregate s per round: median", "best"], folds),
        ]
    )


def run(
    *, clients: int, repeats: int, work: Path, slots: int = UPLOAD_SLOTS
) -> tuple[dict[str, list[Timing]], int]:
    """Measure everything with `slots` upload slots; return timings by name, an update's size."""
    slots_env = {"TRIBUTARY_AGG_MAX_CONCURRENT_UPLOADS": str(slots)}
    results: dict[str, list[Timing]] = {
        name: [] for name in (RAW_TCP, HTTP_READ, RAW_WRITE, RAW_DIRECT)
    }
    with (
        _spawned(_tcp_sink, SOCKET_BUFFER) as tcp_sink,
        _spawned(_http_sink, slots) as (http_pid, http_port),
    ):
        stand_in = Aggregator(http_pid, "127.0.0.1", http_port, Path(os.devnull))

        def network_baselines(bodies: Sequence[bytes]) -> None:
            results[RAW_TCP].append(raw_tcp(tcp_sink, bodies))
            results[HTTP_READ].append(post_together(stand_in, bodies))

        results[INGEST_OFF], size = ingest_rounds(
            work / "state-off",
            clients=clients,
            repeats=repeats,
            persist=False,
            before_each=network_baselines,
            env=slots_env,
        )

    def write_baseline(bodies: Sequence[bytes]) -> None:
        results[RAW_WRITE].append(fsync_write(work, bodies))
        results[RAW_DIRECT].append(direct_write(work, bodies))

    results[INGEST_ON], _ = ingest_rounds(
        work / "state-on",
        clients=clients,
        repeats=repeats,
        persist=True,
        before_each=write_baseline,
        env=slots_env,
    )
    return results, size


def main(argv: Sequence[str] | None = None) -> None:
    """Run the baselines and both ingest modes; print tables of the measured figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, help="where the state dirs go (default: /tmp)")
    parser.add_argument(
        "--upload-slots",
        type=int,
        default=UPLOAD_SLOTS,
        help=f"the aggregator's --max-concurrent-uploads (default: its default, {UPLOAD_SLOTS})",
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}", flush=True)
    print(f"upload slots: {args.upload_slots}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.work_dir) as root:
        results, size = run(
            clients=args.clients, repeats=args.repeats, work=Path(root), slots=args.upload_slots
        )
    print(
        f"{args.clients} clients x {size} bytes per update = {args.clients * size / 1e6:.1f} MB "
        f"per repetition, {args.repeats} repetitions; state dirs under "
        f"{args.work_dir or tempfile.gettempdir()}"
    )
    print(report(results))
    print(f"machine after: {machine_line()}")


if __name__ == "__main__":
    main()
