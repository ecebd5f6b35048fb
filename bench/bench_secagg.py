"""Secure aggregation's cost: time and bytes of a round with it and without, on the MLP.

    .venv/bin/python bench/bench_secagg.py [--clients 10 50 100] [--rounds 3]

For each N, an in-process aggregator (the real app behind a `TestClient`) runs `--rounds`
rounds of the 2NN (199,210 parameters) with N in-process clients, one thread each, in
three modes: ``plain`` (each client posts its trained weights to /receive), ``secagg``
(SecAgg: keys, shares, masked upload, unmasking; every pair of clients masks) and
``secagg+`` (SecAgg+ with 2 ceil(log2 N) neighbours, for N >= 50). The clients do not
train: each posts a fixed seeded delta, so a round's time is the protocol's alone
(communication, the aggregator's work and the clients' crypto, all on this machine's
cores). Figures per round: the median wall time from the clients' start to the round's
close, the bytes each client sends and receives beside the global model's download
(which is the same in every mode), and the aggregator's `aggregate_s`.

Then, apart: one client's own cost for N participants (key agreement: two X25519 pairs
and 2(N-1) agreements through HKDF; sharing: Shamir splits and AES-GCM seals; opening the
shares it receives; quantizing and masking: the AES-CTR expansions), timed in one thread
with nothing else running, and one client's local training of the demo (400 examples, 5
epochs, batch 32), to state the share of key agreement + masking in a 10-client round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_line, markdown_table
from fastapi.testclient import TestClient

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from client_worker.secagg_session import AttemptEnded, SecAggSession
from shared.config import ExperimentConfig, load_config
from shared.secagg.graph import holders, neighbours, share_positions
from shared.secagg.keys import (
    KeyPair,
    commit_seed,
    mask_seed,
    open_shares,
    round_context,
    seal_shares,
    share_aad,
    share_key,
)
from shared.secagg.masks import mask_update
from shared.secagg.quantize import Quantizer
from shared.secagg.shamir import encode_share, split
from shared.secagg.vector import vector_length
from shared.wire import decode_message, decode_weights, encode_message, spec_of

__all__ = ["main"]

MSGPACK = {"content-type": "application/msgpack"}
KiB = 1024


class Counted:
    """A secure-aggregation channel over a TestClient that counts the bytes each way."""

    def __init__(self, client: TestClient, bytes_: Counter[str]) -> None:
        self.client = client
        self.bytes = bytes_

    def secagg_post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST JSON to /secagg/<path>."""
        content = json.dumps(dict(body)).encode()
        headers = {"content-type": "application/json"}
        return self._answer(
            self.client.post(f"/secagg/{path}", content=content, headers=headers), len(content)
        )

    def secagg_get(self, path: str, params: Mapping[str, str | int | float]) -> dict[str, Any]:
        """GET /secagg/<path>."""
        return self._answer(self.client.get(f"/secagg/{path}", params=dict(params)), 0)

    def post_masked(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """POST the msgpack masked message."""
        body = encode_message(message)
        return self._answer(
            self.client.post("/secagg/masked", content=body, headers=MSGPACK), len(body)
        )

    def post_update(self, body: bytes) -> dict[str, Any]:
        """POST a plain update to /receive."""
        return self._answer(self.client.post("/receive", content=body, headers=MSGPACK), len(body))

    def _answer(self, reply: Any, sent: int) -> dict[str, Any]:
        self.bytes["up"] += sent + len(str(reply.request.url))
        self.bytes["down"] += len(reply.content)
        if reply.status_code == 409:
            raise AttemptEnded(reply.json().get("error", "conflict"))
        assert reply.status_code == 200, reply.text[:300]
        answer: dict[str, Any] = reply.json()
        return answer


def _config(n: int, rounds: int, mode: str) -> ExperimentConfig:
    overrides: dict[str, Any] = {
        "model": "mlp",
        "dataset": "mnist5k",
        "server_eval": False,
        "num_rounds": rounds,
        "num_partitions": n,
        "fraction_fit": 1.0,
        "min_fit_clients": n,
        "min_available_clients": n,
        "round_timeout_s": 600.0,
    }
    if mode != "plain":
        overrides["secagg"] = {"enabled": True, "stage_timeout_s": 600.0}
        if mode == "secagg+":
            overrides["secagg"]["num_neighbours"] = neighbours_for(n)
    return load_config(overrides=overrides)


def neighbours_for(n: int) -> int:
    """SecAgg+'s neighbours for N clients: 2 ceil(log2 N)."""
    return 2 * math.ceil(math.log2(n))


def run_rounds(n: int, rounds: int, mode: str, deltas: list[np.ndarray]) -> dict[str, float]:
    """Run `rounds` rounds; return the median round time, bytes per client, aggregate_s."""
    ids = [f"c{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as state:
        settings = AggregatorSettings(
            state_dir=Path(state), max_queued_uploads=4 * n, upload_queue_timeout_s=600.0
        )
        with TestClient(create_app(settings, _config(n, rounds, mode))) as client:
            for c in ids:
                reply = client.post("/register", json={"client_id": c, "num_examples": 400})
                assert reply.status_code == 200, reply.text
            times, traffic = [], Counter[str]()
            for server_round in range(1, rounds + 1):
                _wait(
                    client, lambda s, r=server_round: s["round"] == r and s["phase"] == "training"
                )
                message = decode_message(client.get("/get_weights").content)
                started = time.perf_counter()
                _one_round(client, ids, server_round, message, mode, deltas, traffic)
                _wait(client, lambda s, r=server_round: s["round"] > r or s["phase"] == "finished")
                times.append(time.perf_counter() - started)
            history = client.get("/history").json()
    return {
        "round_s": statistics.median(times),
        "up": traffic["up"] / (n * rounds),
        "down": traffic["down"] / (n * rounds),
        "aggregate_s": statistics.median(row["aggregate_s"] for row in history),
    }


def _one_round(
    client: TestClient,
    ids: list[str],
    server_round: int,
    message: dict[str, Any],
    mode: str,
    deltas: list[np.ndarray],
    traffic: Counter[str],
) -> None:
    current = decode_weights(message["weights"])
    spec = spec_of(current)
    failures: list[BaseException] = []

    def plain(index: int, channel: Counted) -> None:
        weights, offset = {}, 0
        for name, array in current.items():
            delta = deltas[index][offset : offset + array.size].reshape(array.shape)
            weights[name] = (array + delta).astype(array.dtype)
            offset += array.size
        body = encode_message(
            {
                "protocol": 1,
                "client_id": ids[index],
                "round": server_round,
                "num_examples": 400,
                "weights": weights,
            }
        )
        channel.post_update(body)

    def masked(index: int, channel: Counted) -> None:
        session = SecAggSession(channel, ids[index], server_round, message["config"], wait_s=60)
        session.prepare()
        rng = np.random.default_rng([server_round, index])
        session.submit(deltas[index], 400, {}, rng)
        with contextlib.suppress(AttemptEnded):  # the sum was rebuilt before this client's turn
            session.finish()

    def one(index: int) -> None:
        counts: Counter[str] = Counter()
        try:
            (plain if mode == "plain" else masked)(index, Counted(client, counts))
        except BaseException as exc:
            failures.append(exc)
        with lock:
            traffic.update(counts)

    lock = threading.Lock()
    assert vector_length(spec) == deltas[0].size
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


def _wait(client: TestClient, predicate: Any, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate(client.get("/status").json()):
        assert time.monotonic() < deadline, client.get("/status").json()
        time.sleep(0.005)


def client_crypto(n: int, length: int, num_neighbours: int | None) -> dict[str, float]:
    """Time one client's own secure-aggregation work for N participants (seconds)."""
    ids = [f"c{i:03d}" for i in range(n)]
    me = ids[0]
    context = round_context(1, 0)
    graph = neighbours(ids, num_neighbours, seed=0, server_round=1, attempt=0)
    peers = sorted(graph[me])
    others = {c: (KeyPair(), KeyPair()) for c in peers}  # the neighbours' keys, drawn outside
    x = share_positions(ids)
    mine = sorted(holders(graph, me))
    h = len(mine)
    t = min(h, max(math.ceil(2 * h / 3), h // 2 + 1))
    delta = np.random.default_rng(0).normal(0.0, 0.01, length)

    started = time.perf_counter()
    c_pair, s_pair, self_seed = KeyPair(), KeyPair(), bytes(32)
    commit_seed(self_seed)
    keys = {c: share_key(c_pair, others[c][0].public, context) for c in peers}
    seeds = {c: others[c][1].public for c in peers}
    for c in peers:  # the pairwise seeds, as mask_update derives them
        mask_seed(s_pair, seeds[c], context)
    agreed = time.perf_counter()
    b_split = split(self_seed, threshold=t, xs=[x[c] for c in mine])
    sk_split = split(s_pair.private_bytes(), threshold=t, xs=[x[c] for c in mine])
    sealed = {
        c: seal_shares(
            keys[c],
            encode_share(b_split[x[c]]) + encode_share(sk_split[x[c]]),
            share_aad(context, me, c),
        )
        for c in peers
    }
    shared_at = time.perf_counter()
    for c in peers:  # what the neighbours sealed for this client: the same sizes
        open_shares(keys[c], sealed[c], share_aad(context, me, c))
    opened = time.perf_counter()
    quantized = Quantizer().quantize(delta, np.random.default_rng(1))
    mask_update(
        quantized, client_id=me, self_seed=self_seed, s_pair=s_pair, peers=seeds, context=context
    )
    masked = time.perf_counter()
    return {
        "key agreement": agreed - started,
        "sharing": shared_at - agreed,
        "opening": opened - shared_at,
        "masking": masked - opened,
    }


def training_seconds() -> float:
    """Time one client's local training in the demo: 400 examples, 5 epochs, batch 32."""
    import torch

    from client_worker.train import TrainConfig, train
    from shared.models import build_model

    model = build_model("mlp", in_channels=1, num_classes=10, image_size=28)
    images = torch.rand(400, 1, 28, 28)
    labels = torch.randint(0, 10, (400,))
    config = TrainConfig(local_epochs=5, batch_size=32, lr=0.05)
    train(model, images, labels, config, seed=0)  # warm-up
    return min(train(model, images, labels, config, seed=s).train_seconds for s in (1, 2, 3))


def round_rows(clients: list[int], rounds: int, length: int) -> dict[tuple[int, str], Any]:
    """Run every mode for every N; print and return the figures."""
    deltas = [np.random.default_rng([3, i]).normal(0, 0.01, length) for i in range(max(clients))]
    measured: dict[tuple[int, str], dict[str, float]] = {}
    rows = []
    for n in clients:
        for mode in ["plain", "secagg"] + (["secagg+"] if n >= 50 else []):
            began = time.perf_counter()
            figures = measured[(n, mode)] = run_rounds(n, rounds, mode, deltas[:n])
            base = measured[(n, "plain")]
            label = mode if mode != "secagg+" else f"secagg+ (k={neighbours_for(n)})"
            ratio = figures["round_s"] / base["round_s"]
            extra_s = f"+{figures['round_s'] - base['round_s']:.2f} ({ratio:.1f}x)"
            extra_bytes = figures["up"] + figures["down"] - base["up"] - base["down"]
            rows.append(
                [
                    str(n),
                    label,
                    f"{figures['round_s']:.2f}",
                    "" if mode == "plain" else extra_s,
                    f"{figures['up'] / KiB:.0f}",
                    f"{figures['down'] / KiB:.1f}",
                    "" if mode == "plain" else f"+{extra_bytes / KiB:.0f}",
                    f"{figures['aggregate_s']:.3f}",
                ]
            )
            print(f"N={n} {label}: {figures} ({time.perf_counter() - began:.0f} s)", flush=True)
    header = ["clients", "mode", "round s (median)", "extra s", "KiB up / client"]
    header += ["KiB down / client", "extra KiB / client", "aggregate_s"]
    print(
        "\nRounds (in-process, no training; the model download, the same in every mode, left out):"
    )
    print(markdown_table(header, rows))
    return measured


def crypto_rows(clients: list[int], length: int) -> dict[int, dict[str, float]]:
    """Time one client's own work for every N; print the table; return SecAgg's figures."""
    rows, complete = [], {}
    names: list[str] = []
    for n in clients:
        for k in [None] + ([neighbours_for(n)] if n >= 50 else []):
            cost = client_crypto(n, length, k)
            names = list(cost)
            if k is None:
                complete[n] = cost
            label = "SecAgg" if k is None else f"SecAgg+ (k={k})"
            total = sum(cost.values())
            rows.append([str(n), label, *(f"{1000 * v:.2f}" for v in cost.values())])
            rows[-1].append(f"{1000 * total:.1f}")
    print("\nOne client's own work, ms (one thread, nothing else running):")
    print(markdown_table(["clients", "graph", *names, "total"], rows))
    return complete


def main() -> None:
    """Run the rounds and the per-client timings; print the tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    length = 199_210
    started = time.perf_counter()
    rounds = round_rows(args.clients, args.rounds, length)
    crypto = crypto_rows(args.clients, length)
    if 10 in args.clients:
        train_s = training_seconds()
        agree_mask = crypto[10]["key agreement"] + crypto[10]["masking"]
        secagg_round = rounds[(10, "secagg")]["round_s"]
        with_training = secagg_round + train_s
        print(
            f"\nOne client's local training in the demo (400 examples, 5 epochs): {train_s:.3f} s"
        )
        print(
            f"10 clients: key agreement + masking = {1000 * agree_mask:.1f} ms per client: "
            f"{agree_mask / secagg_round:.1%} of the in-process secagg round "
            f"({secagg_round:.3f} s, no training), {agree_mask / with_training:.1%} of a round "
            f"with training ({with_training:.3f} s; the clients train in parallel)"
        )
    print(f"\nbench_secagg: {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
