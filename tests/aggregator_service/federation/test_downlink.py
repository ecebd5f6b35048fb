"""The download chain: versions, their ETags, the steps kept, and when an answer is full."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from aggregator_service.federation.downlink import DownloadChain
from aggregator_service.federation.publish import PublishedModel, publish
from shared.compression import apply_step
from shared.config import DownloadCompressionConfig
from shared.wire import decode_message

Weights = dict[str, np.ndarray]


def weights(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((100, 100)).astype(np.float32)}


def published(model: Mapping[str, np.ndarray], server_round: int = 1) -> PublishedModel:
    return publish(
        server_round=server_round,
        phase="training",
        model="mlp",
        selected=frozenset({"a"}),
        config={"seed": 0},
        weights=model,
    )


def chain(keep: int = 2, **section: Any) -> DownloadChain:
    config = DownloadCompressionConfig(encoding="q8", keep_versions=keep, **section)
    return DownloadChain(config, seed=0)


def resolved(held: Weights, answer: bytes) -> Weights:
    message = decode_message(answer)
    assert "weights" not in message
    for step in message["deltas"]:
        held = apply_step(held, step)
    return held


def test_a_worker_following_the_chain_holds_the_servers_model_bit_for_bit() -> None:
    downlink = chain()
    model = weights(0)
    first = published(model)
    downlink.note(first)
    same = published(model)  # a new ETag for the same weights (another phase, say)
    downlink.note(same)
    held: Weights = dict(model)
    base = first.etag
    for server_round in (1, 2, 3):
        new = downlink.chain(server_round, model, weights(server_round))
        current = published(new, server_round + 1)
        downlink.note(current)
        answer = downlink.answer(current, base)
        assert answer is not None
        assert len(answer) < len(current.payload) / 3
        assert decode_message(answer)["round"] == server_round + 1
        held = resolved(held, answer)
        assert all(held[k].tobytes() == new[k].tobytes() for k in new)
        model, base = new, current.etag
    assert downlink.answer(same, same.etag) is None  # older than the model it answers for


def test_an_unknown_a_stale_or_a_broken_base_gets_full_weights() -> None:
    downlink = chain(keep=2)
    model = weights(0)
    etags = []
    for server_round in range(1, 5):
        current = published(model, server_round)
        downlink.note(current)
        etags.append(current.etag)
        model = downlink.chain(server_round, model, weights(server_round))
    current = published(model, 5)
    downlink.note(current)
    assert downlink.answer(current, '"nobody-1"') is None
    assert downlink.answer(current, etags[1]) is None  # three versions back: forgotten
    assert len(decode_message(downlink.answer(current, etags[2]) or b"")["deltas"]) == 2
    outside = published(weights(9), 6)  # e.g. a model loaded from elsewhere
    downlink.note(outside)
    assert downlink.answer(outside, current.etag) is None


def test_the_same_seed_makes_the_same_steps() -> None:
    runs = []
    for _ in range(2):
        downlink = chain(rounding="stochastic")
        model = weights(0)
        downlink.note(published(model))
        runs.append(downlink.chain(1, model, weights(1))["w"].tobytes())
    assert runs[0] == runs[1]
