"""Aggregator ingest throughput: N clients posting ResNet18 updates at once over loopback HTTP.

Measured in one run, each `--repeats` times:

- raw TCP: N threads each send one body of the update's size over loopback to a plain socket
  sink in another process (4 MiB socket buffers, 4 MiB receive buffer per connection); from
  the first byte sent to the last one-byte acknowledgement sent once the sink has read every
  byte of its connection;
- HTTP read only: the same uploads to a stand-in server process running the same HTTP stack
  (uvicorn, FastAPI, the service's `read_body` under the same two upload slots) that
  answers 200 once the body is read and does nothing with it: the ceiling the HTTP layer
  leaves for the aggregator;
- raw write: the same bytes written to the state dir's filesystem as N files of the update's
  size, one after the other, each fsynced (as the store does with an accepted update);
- ingest: an aggregator process (``python -m aggregator_service``) in a round of N clients;
  N threads each POST one update, encoded beforehand, at the same moment; from the first
  byte sent to the last 200 reply. Once with ``--no-persist-updates``, once with
  persistence on; each repetition is one round of the same server.

GB/s means 1e9 bytes per second. The CPU columns split the CPU seconds used during each
measurement between the server (or TCP sink), this process (the clients), and everything
else on the machine. Run: ``.venv/bin/python bench/bench_ingest.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
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

import numpy as np
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
    summarize,
    wait_for_status,
)
from fastapi import FastAPI, Request

from aggregator_service.body import read_body
from aggregator_service.settings import AggregatorSettings

__all__ = ["Timing", "fsync_write", "http_read_only", "ingest_round", "main", "raw_tcp", "report"]

SOCKET_BUFFER = 4 << 20
RAW_TCP, RAW_WRITE, HTTP_READ = "raw TCP", "raw fsync write", "HTTP read only"
INGEST_OFF, INGEST_ON = "ingest, persistence off", "ingest, persistence on"
UPLOAD_SLOTS = AggregatorSettings().max_concurrent_uploads  # the service's default
Span = tuple[float, float]  # perf_counter at the first byte sent, at the reply


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
    count: int, send: Callable[[threading.Barrier], Span], nbytes: int, server_pid: int | None
) -> Timing:
    """Run `send` in `count` threads released together; time the first start to the last reply."""
    start = threading.Barrier(count, timeout=120)

    def run_all() -> list[Span]:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: send(start), range(count)))

    spans, cpu = measure_cpu(server_pid, run_all)
    seconds = max(end for _, end in spans) - min(begin for begin, _ in spans)
    return Timing(nbytes, seconds, cpu)


# --------------------------------------------------------------------------- raw TCP


def _tcp_sink(reply: Connection, nbytes: int) -> None:
    """Accept connections forever; read `nbytes` from each, then acknowledge with one byte."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    reply.send(listener.getsockname()[1])
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_drain, args=(connection, nbytes), daemon=True).start()


def _drain(connection: socket.socket, nbytes: int) -> None:
    view = memoryview(bytearray(SOCKET_BUFFER))
    received = 0
    with connection:
        while received < nbytes:
            count = connection.recv_into(view)
            if count == 0:
                return
            received += count
        connection.sendall(b"k")


def _send_one(port: int, body: bytes, start: threading.Barrier) -> Span:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sender:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        start.wait()
        began = time.perf_counter()
        sender.sendall(body)
        if sender.recv(1) != b"k":
            raise RuntimeError("the TCP sink closed the connection before reading every byte")
        return began, time.perf_counter()


def raw_tcp(body: bytes, *, senders: int, repeats: int) -> list[Timing]:
    """Time `senders` concurrent loopback transfers of `body` to a sink in another process."""
    with _spawned(_tcp_sink, len(body)) as (pid, port):
        return [
            _concurrently(
                senders, lambda start: _send_one(port, body, start), len(body) * senders, pid
            )
            for _ in range(repeats)
        ]


@contextmanager
def _spawned(target: Callable[[Connection, int], None], arg: int) -> Iterator[tuple[int, int]]:
    """Run `target(pipe, arg)` in a fresh process until the block ends; yield (pid, port)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(child, arg), daemon=True)
    process.start()
    try:
        if not parent.poll(60):
            raise TimeoutError(f"{target.__name__} did not start within 60 s")
        assert process.pid is not None
        yield process.pid, int(parent.recv())
    finally:
        process.terminate()
        process.join(10)


# -------------------------------------------------------------------- HTTP read only


def _read_only_app(upload_slots: int) -> FastAPI:
    """An app whose POST /receive reads the body as the aggregator's does, then answers."""
    app = FastAPI()
    slots = asyncio.Semaphore(upload_slots)

    @app.post("/receive")
    async def receive(request: Request) -> dict[str, int]:
        async with slots:
            body = await read_body(request, 1 << 30)
        return {"received": len(body)}

    return app


def _http_sink(reply: Connection, upload_slots: int) -> None:
    """Serve the read-only app on a free loopback port, sent back through `reply`."""
    app = _read_only_app(upload_slots)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)  # connections wait in the backlog until the server accepts them
    reply.send(listener.getsockname()[1])
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])


def http_read_only(bodies: Sequence[bytes], *, repeats: int, upload_slots: int) -> list[Timing]:
    """Time posting `bodies` at once to a server that only reads them."""
    with _spawned(_http_sink, upload_slots) as (pid, port):
        server = Aggregator(pid, "127.0.0.1", port, Path(os.devnull))
        return [_post_together(server, bodies) for _ in range(repeats)]


# ------------------------------------------------------------------------ raw write


def fsync_write(directory: Path, body: bytes, *, count: int, repeats: int) -> list[Timing]:
    """Time writing `count` files of `body` into `directory` in sequence, each fsynced."""
    timings = []
    for repeat in range(repeats):
        paths = [directory / f"raw-write-{repeat}-{i}.bin" for i in range(count)]
        began = time.perf_counter()
        _, cpu = measure_cpu(None, functools.partial(_write_files, paths, body))
        timings.append(Timing(len(body) * count, time.perf_counter() - began, cpu))
        for path in paths:
            path.unlink()
    return timings


def _write_files(paths: Sequence[Path], body: bytes) -> None:
    for path in paths:
        with open(path, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
    fd = os.open(paths[0].parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- ingest


def ingest_round(
    server: Aggregator, client_ids: Sequence[str], server_round: int, weights: dict[str, np.ndarray]
) -> Timing:
    """Encode every client's update for the round, then post them all at once and time it."""
    wait_for_status(server, lambda s: s["round"] == server_round and s["phase"] == "training")
    bodies = [encode_update(cid, server_round, weights) for cid in client_ids]
    return _post_together(server, bodies)


def _post_together(server: Aggregator, bodies: Sequence[bytes]) -> Timing:
    """POST every body from its own thread, all released at once; time the lot."""
    claim = iter(bodies)
    lock = threading.Lock()

    def send(start: threading.Barrier) -> Span:
        with lock:
            body = next(claim)
        upload = post_update(server, body, start=start)
        return upload.started, upload.finished

    return _concurrently(len(bodies), send, sum(len(b) for b in bodies), server.pid)


def ingest_run(
    state_dir: Path,
    *,
    clients: int,
    repeats: int,
    persist: bool,
    first: Callable[[bytes], None],
) -> tuple[list[Timing], int]:
    """Run one aggregator for `repeats` rounds; `first(body)` runs before them (a baseline)."""
    client_ids = [f"client-{i:03d}" for i in range(clients)]  # fixed width: equal body sizes
    with running_aggregator(
        state_dir=state_dir, num_clients=clients, num_rounds=repeats, persist_updates=persist
    ) as server:
        register_clients(server, client_ids)
        wait_for_status(server, lambda s: s["phase"] == "training")
        weights = {}
        for cid in client_ids:  # every client fetches the model once, as in a real round
            weights = fetch_model(server, cid)
        body = encode_update(client_ids[0], 1, weights)
        first(body)
        timings = [
            ingest_round(server, client_ids, server_round, weights)
            for server_round in range(1, repeats + 1)
        ]
    return timings, len(body)


# --------------------------------------------------------------------------- report


def _row(name: str, timings: Sequence[Timing]) -> list[str]:
    best, median = summarize([t.gbps for t in timings])
    cells = [
        statistics.median(t.seconds for t in timings),
        statistics.median(t.cpu.server for t in timings),
        statistics.median(t.cpu.client for t in timings),
        statistics.median(t.cpu.others for t in timings),
    ]
    return [name, f"{best:.3f}", f"{median:.3f}", *(f"{c:.2f}" for c in cells)]


def _ratio_row(results: dict[str, list[Timing]], top: str, bottom: str, target: str) -> list[str]:
    best = max(t.gbps for t in results[top]) / max(t.gbps for t in results[bottom])
    median = statistics.median(t.gbps for t in results[top]) / statistics.median(
        t.gbps for t in results[bottom]
    )
    return [f"{top} / {bottom}", f"{best:.2f}", f"{median:.2f}", target]


def report(results: dict[str, list[Timing]]) -> str:
    """Render the measured figures and the ratios as two Markdown tables."""
    header = ["transfer", "best GB/s", "median GB/s", "median s"]
    header += ["server CPU s", "client CPU s", "others' CPU s"]
    names = [RAW_TCP, HTTP_READ, INGEST_OFF, RAW_WRITE, INGEST_ON]
    ratios = [
        _ratio_row(results, INGEST_OFF, RAW_TCP, ">= 0.5 (target)"),
        _ratio_row(results, HTTP_READ, RAW_TCP, "-"),
        _ratio_row(results, INGEST_OFF, HTTP_READ, "-"),
        _ratio_row(results, INGEST_ON, RAW_WRITE, ">= 0.8 (target)"),
    ]
    return (
        markdown_table(header, [_row(name, results[name]) for name in names])
        + "\n\n"
        + markdown_table(["ratio", "best", "median", "target"], ratios)
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the baselines and both ingest modes; print tables of the measured figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, help="where the state dirs go (default: /tmp)")
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}", flush=True)
    results: dict[str, list[Timing]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.work_dir) as root:
        work = Path(root)

        def tcp(body: bytes) -> None:
            results[RAW_TCP] = raw_tcp(body, senders=args.clients, repeats=args.repeats)
            results[HTTP_READ] = http_read_only(
                [body] * args.clients, repeats=args.repeats, upload_slots=UPLOAD_SLOTS
            )

        def write(body: bytes) -> None:
            results[RAW_WRITE] = fsync_write(work, body, count=args.clients, repeats=args.repeats)

        off, body_size = ingest_run(
            work / "state-off", clients=args.clients, repeats=args.repeats, persist=False, first=tcp
        )
        results[INGEST_OFF] = off
        on, _ = ingest_run(
            work / "state-on", clients=args.clients, repeats=args.repeats, persist=True, first=write
        )
        results[INGEST_ON] = on
    print(
        f"{args.clients} clients x {body_size} bytes per update = "
        f"{args.clients * body_size / 1e6:.1f} MB per repetition, {args.repeats} repetitions; "
        f"state dir under {args.work_dir or tempfile.gettempdir()}"
    )
    print(report(results))
    print(f"machine after: {machine_line()}")


if __name__ == "__main__":
    main()
