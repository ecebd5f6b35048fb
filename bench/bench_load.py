"""Load: N concurrent clients register, long-poll and post for several rounds against ONE
aggregator process on loopback, and every update is checked to count exactly once.

The aggregator (``python -m aggregator_service``) runs the 2NN ("mlp") on mnist5k shapes
without server-side evaluation, with min_fit_clients = min_available_clients = N and
fraction_fit 1.0: every round waits for all N clients (no threshold), so each round must
absorb exactly N updates. Its other limits are the service's defaults, except the
per-client /receive rate limit, which is off (``--receive-rate 0``): without
authentication it is keyed by the remote address, and all N clients here share 127.0.0.1.

The clients are coroutines on one ``httpx.AsyncClient`` pool in this process. Each one
behaves like a worker: register, long-poll ``GET /get_weights`` with ``min_round`` and its
ETag, and when selected post the global model plus 1e-4 * (k + 1) on every floating
tensor, weighted by num_examples = 10 + k (client k). A 503 is retried after its
Retry-After, as workers do; anything else that is not a 2xx/304 is an error. A separate
process polls ``GET /status`` every `--status-interval` seconds to time it.

Checked at the end: every round's /history row names all N clients with the sum of their
num_examples; every client got exactly one non-duplicate acknowledgement per round; the
model after each round equals the example-weighted mean computed here (float64, from the
very arrays posted). Reported: errors, 503 retries, p50/p99 latency of /status and
/receive, the aggregator's peak RSS (VmHWM) and the CPU time used by the aggregator and by
this process. Bounded by `--max-seconds`. Run: ``.venv/bin/python bench/bench_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import (
    machine_busy_seconds,
    machine_line,
    markdown_table,
    process_cpu_seconds,
    read_memory,
)

from shared.runs.launch import Child
from shared.runs.service import local_aggregator
from shared.wire import decode_message, decode_weights, encode_message

__all__ = ["LoadStats", "main"]

Weights = dict[str, np.ndarray]
MSGPACK = "application/msgpack"
SHIFT = 1e-4  # client k adds SHIFT * (k + 1) to every floating tensor


@dataclass
class LoadStats:
    """What the clients saw."""

    receive_s: list[float] = field(default_factory=list)  # each update, 503 retries included
    attempt_s: list[float] = field(default_factory=list)  # each POST /receive request
    statuses: Counter[str] = field(default_factory=Counter)  # "GET 200", "POST 503", ...
    errors: list[str] = field(default_factory=list)
    acknowledged: dict[int, Counter[str]] = field(default_factory=dict)  # round: client: n
    duplicates: int = 0
    models: dict[int, Weights] = field(default_factory=dict)  # round: model it started from
    final: Weights | None = None


# ------------------------------------------------------------------ the aggregator process


def start_aggregator(
    state_dir: Path, args: argparse.Namespace
) -> AbstractContextManager[tuple[str, Child]]:
    """Run the aggregator for `args.clients` clients until the block ends; yield URL, process."""
    n = str(args.clients)
    flags = ["--receive-rate", "0"]
    if args.max_queued_uploads is not None:
        flags += ["--max-queued-uploads", str(args.max_queued_uploads)]
    overrides = (
        "model=mlp",
        "dataset=mnist5k",
        "server_eval=false",
        f"num_rounds={args.rounds}",
        f"min_fit_clients={n}",
        f"min_available_clients={n}",
        "fraction_fit=1.0",
        "round_timeout_s=600",
    )
    log_path = state_dir.parent / "aggregator.log"
    return local_aggregator(state_dir, *overrides, flags=flags, log_path=log_path, timeout_s=120)


# ------------------------------------------------------------------ the /status poller


def poll_status(url: str, interval: float, conn: Connection) -> None:
    """In its own process: GET /status every `interval` s until told to stop; send latencies."""
    latencies: list[float] = []
    failures = 0
    with httpx.Client(timeout=10) as http:
        conn.send("ready")
        while not conn.poll(interval):
            started = time.perf_counter()
            try:
                ok = http.get(f"{url}/status").status_code == 200
            except httpx.TransportError:
                ok = False
            latencies.append(time.perf_counter() - started)
            failures += not ok
    conn.send((latencies, failures))


# ------------------------------------------------------------------ one simulated client


def client_update(model: Mapping[str, np.ndarray], k: int) -> Weights:
    """Client k's update: the global model plus SHIFT * (k + 1) on floating tensors."""
    return {
        name: (a + np.asarray(SHIFT * (k + 1), a.dtype)) if a.dtype.kind == "f" else a.copy()
        for name, a in model.items()
    }


def num_examples_of(k: int) -> int:
    """Client k's FedAvg weight."""
    return 10 + k


async def run_client(http: httpx.AsyncClient, k: int, stats: LoadStats) -> None:
    """Register, then take part in every round until the run is finished."""
    client_id = f"c{k:03d}"
    await request(http, stats, "POST", "/register", json={"client_id": client_id})
    last_done, etag = 0, None
    while True:
        params = {"client_id": client_id, "min_round": last_done + 1, "wait": 30}
        headers: dict[str, str] = {"If-None-Match": etag} if etag else {}
        reply = await request(http, stats, "GET", "/get_weights", params=params, headers=headers)
        if reply.status_code == 304:
            continue
        etag = reply.headers.get("ETag")
        message = decode_message(reply.content)
        server_round, phase = int(message["round"]), str(message["phase"])
        if phase == "finished":
            stats.final = stats.final or decode_weights(message["weights"])
            return
        if phase != "training" or server_round <= last_done:
            continue
        model = decode_weights(message["weights"])
        stats.models.setdefault(server_round, model)
        if client_id in message["selected"]:
            await post_update(http, stats, client_id, k, server_round, model)
        last_done = server_round


async def post_update(
    http: httpx.AsyncClient,
    stats: LoadStats,
    client_id: str,
    k: int,
    server_round: int,
    model: Weights,
) -> None:
    """POST client k's update for `server_round` and record the acknowledgement."""
    body = encode_message(
        {
            "protocol": 1,
            "client_id": client_id,
            "round": server_round,
            "num_examples": num_examples_of(k),
            "weights": client_update(model, k),
            "metrics": {"train_loss": 0.5},
        }
    )
    started = time.perf_counter()
    reply = await request(
        http, stats, "POST", "/receive", content=body, headers={"content-type": MSGPACK}
    )
    stats.receive_s.append(time.perf_counter() - started)
    answer = reply.json()
    if answer.get("duplicate"):
        stats.duplicates += 1
    else:
        stats.acknowledged.setdefault(server_round, Counter())[client_id] += 1


async def request(
    http: httpx.AsyncClient, stats: LoadStats, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """Send, retrying a 503 after its Retry-After; record every status; raise on an error."""
    while True:
        started = time.perf_counter()
        reply = await http.request(method, path, **kwargs)
        if path == "/receive":
            stats.attempt_s.append(time.perf_counter() - started)
        stats.statuses[f"{method} {reply.status_code}"] += 1
        if reply.status_code == 503:
            await asyncio.sleep(float(reply.headers.get("Retry-After", "1")))
            continue
        if reply.status_code >= 400:
            stats.errors.append(f"{method} {path}: {reply.status_code} {reply.text[:200]}")
            raise RuntimeError(stats.errors[-1])
        return reply


async def run_clients(url: str, num_clients: int, stats: LoadStats, max_seconds: float) -> None:
    """Run every client to the end of the run, or fail after `max_seconds`.

    Each client has its own connection pool, as separate workers would: one pool shared
    by all of them costs O(connections) per request in httpcore, which made this process
    the bottleneck.
    """
    verify = ssl.create_default_context()  # built once: loading the CA store is slow
    timeout = httpx.Timeout(120, connect=10)
    https = [
        httpx.AsyncClient(base_url=url, timeout=timeout, verify=verify) for _ in range(num_clients)
    ]
    try:
        clients = [run_client(http, k, stats) for k, http in enumerate(https)]
        results = await asyncio.wait_for(
            asyncio.gather(*clients, return_exceptions=True), max_seconds
        )
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    for result in results:
        if isinstance(result, BaseException):
            stats.errors.append(f"{type(result).__name__}: {result}")


# ------------------------------------------------------------------ checks and report


def expected_model(model: Weights, acknowledged: Counter[str]) -> Weights:
    """The example-weighted mean of the acknowledged clients' updates, in float64."""
    ks = [int(client_id[1:]) for client_id in acknowledged]
    updates = {k: client_update(model, k) for k in ks}
    total = sum(num_examples_of(k) for k in ks)
    mean: Weights = {}
    for name, array in model.items():
        if array.dtype.kind != "f":
            mean[name] = np.maximum.reduce([updates[k][name] for k in ks])
            continue
        weighted = np.zeros(array.shape, np.float64)
        for k in ks:
            weighted += num_examples_of(k) * updates[k][name].astype(np.float64)
        mean[name] = (weighted / total).astype(array.dtype)
    return mean


def check_rounds(
    history: list[dict[str, Any]], stats: LoadStats, args: argparse.Namespace
) -> list[str]:
    """Compare /history and the models with what was acknowledged; return the problems."""
    problems: list[str] = []
    everyone = sorted(f"c{k:03d}" for k in range(args.clients))
    if [row["round"] for row in history] != list(range(1, args.rounds + 1)):
        problems.append(f"history rounds {[row['round'] for row in history]}")
    for row in history:
        acked = stats.acknowledged.get(row["round"], Counter())
        if sorted(acked) != everyone or any(n != 1 for n in acked.values()):
            problems.append(f"round {row['round']}: acknowledged {sum(acked.values())} updates")
        if row["participants"] != everyone:
            problems.append(f"round {row['round']}: {len(row['participants'])} participants")
        if row["num_examples"] != sum(num_examples_of(k) for k in range(args.clients)):
            problems.append(f"round {row['round']}: num_examples {row['num_examples']}")
        after = stats.models.get(row["round"] + 1, stats.final)
        before = stats.models.get(row["round"])
        if before is None or after is None:
            problems.append(f"round {row['round']}: model not seen")
            continue
        for name, array in expected_model(before, acked).items():
            if not np.allclose(after[name], array, rtol=1e-6, atol=1e-7):
                problems.append(f"round {row['round']}: tensor {name} differs from the mean")
    return problems


def percentiles(values: list[float]) -> str:
    """Return 'p50 / p99 / max' in milliseconds."""
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"{cuts[49] * 1e3:.1f} / {cuts[98] * 1e3:.1f} / {max(values) * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its figures as Markdown; exit 1 on any error or loss."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--status-interval", type=float, default=0.05)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument(
        "--max-queued-uploads", type=int, help="the aggregator's flag (default: its default)"
    )
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="bench-load-") as tmp,
        start_aggregator(Path(tmp) / "state", args) as (url, process),
    ):
        stats = LoadStats()
        receiver, sender = multiprocessing.get_context("spawn").Pipe()
        poller = multiprocessing.get_context("spawn").Process(
            target=poll_status, args=(url, args.status_interval, sender)
        )
        try:
            poller.start()
            if not receiver.poll(60) or receiver.recv() != "ready":
                raise RuntimeError("the /status poller did not start")
            idle = read_memory(process.pid)["VmRSS"]
            own_before, busy_before = sum(os.times()[:2]), machine_busy_seconds()
            server_before, started = process_cpu_seconds(process.pid), time.perf_counter()
            asyncio.run(run_clients(url, args.clients, stats, args.max_seconds))
            wall = time.perf_counter() - started
            own = sum(os.times()[:2]) - own_before
            server = process_cpu_seconds(process.pid) - server_before
            busy = machine_busy_seconds() - busy_before
            receiver.send("stop")
            status_s, status_failures = receiver.recv()
            peak = read_memory(process.pid)["VmHWM"]
            history = httpx.get(f"{url}/history", timeout=30).json()
            problems = check_rounds(history, stats, args)
        finally:
            if poller.is_alive():
                poller.terminate()
            poller.join(10)

    updates = args.rounds * args.clients
    durations = ", ".join(f"{row['duration_s']:.1f}" for row in history)
    queue = args.max_queued_uploads if args.max_queued_uploads is not None else "default"
    rows = [
        ["machine", machine_line()],
        ["clients x rounds", f"{args.clients} x {args.rounds} ({updates} updates), {wall:.1f} s"],
        ["--max-queued-uploads", str(queue)],
        ["round durations (s)", durations],
        ["errors", f"{len(stats.errors)} (+ {status_failures} failed /status polls)"],
        ["lost or double-counted updates", f"{len(problems)} problems"],
        ["503 retries (busy upload queue)", str(stats.statuses["POST 503"])],
        ["duplicate acknowledgements", str(stats.duplicates)],
        ["/status p50 / p99 / max (ms)", f"{percentiles(status_s)} ({len(status_s)} polls)"],
        ["POST /receive p50 / p99 / max (ms)", percentiles(stats.attempt_s)],
        ["update posted to acknowledged (ms)", f"{percentiles(stats.receive_s)} (503 waits in)"],
        ["aggregator RSS idle / peak (VmHWM)", f"{idle / 2**20:.0f} / {peak / 2**20:.0f} MiB"],
        [
            "CPU: aggregator / bench / others",
            f"{server:.1f} / {own:.1f} / {busy - server - own:.1f} s",
        ],
    ]
    print(markdown_table(["measure", "value"], rows))
    for line in [*stats.errors[:10], *problems[:10]]:
        print(f"- {line}")
    return 1 if stats.errors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
