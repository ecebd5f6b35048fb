"""Aggregator ingest throughput: N clients posting ResNet18 updates at once over loopback HTTP.

Measured in one run, each `--repeats` times:

- raw TCP: N threads each send one body of the update's size over loopback to a plain socket
  sink in another process (4 MiB socket buffers, 4 MiB receive buffer per connection); from
  the first byte sent to the last one-byte acknowledgement sent once the sink has read every
  byte of its connection;
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
import functools
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
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

__all__ = ["Timing", "fsync_write", "ingest_round", "main", "raw_tcp"]

SOCKET_BUFFER = 4 << 20
RAW_TCP, RAW_WRITE = "raw TCP", "raw fsync write"
INGEST_OFF, INGEST_ON = "ingest, persistence off", "ingest, persistence on"
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
    start = threading.Barrier(count)

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
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    sink = context.Process(target=_tcp_sink, args=(child, len(body)), daemon=True)
    sink.start()
    try:
        if not parent.poll(60):
            raise TimeoutError("the TCP sink did not start within 60 s")
        port = int(parent.recv())
        return [
            _concurrently(
                senders, lambda start: _send_one(port, body, start), len(body) * senders, sink.pid
            )
            for _ in range(repeats)
        ]
    finally:
        sink.terminate()
        sink.join(10)


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
    claim = iter(bodies)
    lock = threading.Lock()

    def send(start: threading.Barrier) -> Span:
        with lock:
            body = next(claim)
        upload = post_update(server, body, start=start)
        return upload.started, upload.finished

    nbytes = sum(len(body) for body in bodies)
    return _concurrently(len(bodies), send, nbytes, server.pid)


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


def _ratio_row(
    name: str, top: Sequence[Timing], bottom: Sequence[Timing], target: float
) -> list[str]:
    best = max(t.gbps for t in top) / max(t.gbps for t in bottom)
    median = statistics.median(t.gbps for t in top) / statistics.median(t.gbps for t in bottom)
    return [name, f"{best:.2f}", f"{median:.2f}", f">= {target} (target)"]


def report(results: dict[str, list[Timing]]) -> str:
    """Render the measured figures and the ratios as two Markdown tables."""
    header = ["transfer", "best GB/s", "median GB/s", "median s"]
    header += ["server CPU s", "client CPU s", "others' CPU s"]
    names = [RAW_TCP, INGEST_OFF, RAW_WRITE, INGEST_ON]
    ratios = [
        _ratio_row(f"{INGEST_OFF} / {RAW_TCP}", results[INGEST_OFF], results[RAW_TCP], 0.5),
        _ratio_row(f"{INGEST_ON} / {RAW_WRITE}", results[INGEST_ON], results[RAW_WRITE], 0.8),
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
