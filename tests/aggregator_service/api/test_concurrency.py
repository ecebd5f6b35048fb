"""Concurrent uploads: exact weighted means, and a responsive /status while big updates arrive."""

from __future__ import annotations

import contextlib
import json
import mmap
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from aggregator_service.api import body
from shared.wire import decode_message, decode_weights
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    aggregator_process,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

Updates = dict[str, tuple[dict[str, np.ndarray], int]]


def _post_at_once_and_check_the_mean(client: TestClient, client_ids: list[str]) -> None:
    """Post a random update per client from a thread each, all at once; check the mean."""
    register(client, *client_ids)
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    rng = np.random.default_rng(0)
    updates: Updates = {
        cid: ({k: rng.normal(size=a.shape).astype(a.dtype) for k, a in weights.items()}, i + 1)
        for i, cid in enumerate(client_ids)
    }
    bodies = {cid: update_body(cid, 1, u, num_examples=n) for cid, (u, n) in updates.items()}
    start = threading.Barrier(len(client_ids))
    replies: list[int] = []

    def post(cid: str) -> None:
        start.wait(30)
        replies.append(client.post("/receive", content=bodies[cid], headers=MSGPACK).status_code)

    threads = [threading.Thread(target=post, args=(cid,)) for cid in client_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert replies == [200] * len(client_ids)
    wait_for(client, lambda s: s["round"] == 2)
    _, new = global_model(client)
    total = sum(n for _, n in updates.values())
    for name in weights:
        expected = np.asarray(sum(u[name].astype(np.float64) * n for u, n in updates.values()))
        expected /= total
        np.testing.assert_allclose(new[name], expected.astype(np.float32), rtol=1e-5, atol=1e-6)


def test_ten_threads_posting_give_the_exact_weighted_mean(start_app: AppFactory) -> None:
    client_ids = [f"c{i}" for i in range(10)]
    client = start_app(experiment(min_fit_clients=10, min_available_clients=10))
    _post_at_once_and_check_the_mean(client, client_ids)


def test_large_updates_through_one_slot_reuse_body_buffers_and_give_the_exact_mean(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocated: list[int] = []
    fresh = body._map

    def counting_map(size: int) -> mmap.mmap:
        allocated.append(size)
        return fresh(size)

    monkeypatch.setattr(body, "_map", counting_map)  # fresh body mappings, stocked ones too
    client_ids = [f"c{i}" for i in range(8)]
    config = experiment(model="cnn", min_fit_clients=8, min_available_clients=8)
    client = start_app(config, max_concurrent_uploads=1)
    _post_at_once_and_check_the_mean(client, client_ids)
    assert min(allocated) > 1 << 20  # 6.6 MB updates: mapped bodies
    assert len(allocated) < len(client_ids)  # some uploads took the buffer of the one before


class _Poller:
    """A /status poller in a process of its own (tests/aggregator_service/poll_status.py)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def stop(self) -> list[float]:
        """Stop polling; return the latencies of its requests, in seconds."""
        out, _ = self.process.communicate(timeout=60)  # closing stdin stops the polling
        assert self.process.returncode == 0, out
        return [float(x) for x in json.loads(out.splitlines()[-1])]


@contextlib.contextmanager
def _status_poller(url: str) -> Iterator[_Poller]:
    """Run the poller while the block runs; it has sent its first request when this yields."""
    command = [sys.executable, "-m", "tests.aggregator_service.poll_status", url]
    root = Path(__file__).resolve().parents[3]  # where `tests` is importable from
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield _Poller(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_status_stays_responsive_while_ten_resnet18_updates_arrive(tmp_path: Path) -> None:
    overrides = ["model=resnet18", "dataset=synthetic", "min_fit_clients=10"]
    overrides += ["min_available_clients=10", "num_rounds=1", "server_eval=false"]
    with (
        aggregator_process(tmp_path / "state", *overrides) as (url, _),
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        for i in range(10):
            http.post("/register", json={"client_id": f"c{i}"}).raise_for_status()
        reply = http.get("/get_weights")
        weights = decode_weights(decode_message(reply.content)["weights"])
        bodies = [update_body(f"c{i}", 1, weights) for i in range(10)]
        assert len(bodies[0]) > 44_000_000

        def upload(i: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as own:
                own.post("/receive", content=bodies[i], headers=MSGPACK).raise_for_status()

        uploaders = [threading.Thread(target=upload, args=(i,)) for i in range(10)]
        with _status_poller(url) as poller:
            started = time.perf_counter()
            for thread in uploaders:
                thread.start()
            for thread in uploaders:
                thread.join(timeout=120)
            upload_seconds = time.perf_counter() - started
            latencies = poller.stop()
        status = http.get("/status").json()
        assert status["phase"] == "finished" or status["received"] == 10
    assert len(latencies) >= 5
    print(
        f"/status during {upload_seconds:.2f}s of uploads: n={len(latencies)} "
        f"median={statistics.median(latencies):.4f}s max={max(latencies):.4f}s"
    )
    # Polled from a process of its own, /status took 2-3 ms (median) and 16 ms at most on
    # the 2-core test machine; the bounds leave room for a noisy machine, not for a stall.
    # (Polled from this process, whose ten threads upload, it took up to 1.5 s: that was
    # the test's own GIL, not the server.)
    assert statistics.median(latencies) < 0.1
    assert max(latencies) < 0.5
