"""Secure-aggregation clients for in-process tests: sessions over a TestClient, in threads.

Each client's "training" is a known delta (seeded), so a test can compute the exact sum
the aggregator must find: the plain sum of the quantized deltas.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from client_worker.replies import raise_for_status
from client_worker.secagg_session import AttemptEnded, SecAggSession
from shared.secagg.quantize import Quantizer
from shared.secagg.vector import masked_names, vector_length
from shared.wire import decode_message, decode_weights, encode_message, spec_of
from tests.aggregator_service.helpers import MSGPACK

__all__ = [
    "ClientPlan",
    "SteppedRound",
    "TestChannel",
    "expected_model",
    "known_delta",
    "quantized_delta",
    "run_clients",
]


class TestChannel:
    """A SecAggChannel over a TestClient; errors raise as they do in the worker."""

    __test__ = False

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def secagg_post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST JSON to /secagg/<path>."""
        return self._ok(self.client.post(f"/secagg/{path}", json=dict(body)))

    def secagg_get(self, path: str, params: Mapping[str, str | int | float]) -> dict[str, Any]:
        """GET /secagg/<path>."""
        return self._ok(self.client.get(f"/secagg/{path}", params=dict(params)))

    def post_masked(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """POST the msgpack masked message."""
        body = encode_message(message)
        return self._ok(self.client.post("/secagg/masked", content=body, headers=MSGPACK))

    @staticmethod
    def _ok(reply: Any) -> dict[str, Any]:
        raise_for_status(reply)  # the worker's typed errors: UpdateRejected for a 409
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer


@dataclass
class ClientPlan:
    """What one simulated client does: drop before posting, or after posting, or not at all."""

    client_id: str
    num_examples: int = 10
    drop_before_masked: bool = False
    drop_before_unmask: bool = False
    errors: list[BaseException] = field(default_factory=list)


def known_delta(client_id: str, length: int) -> np.ndarray:
    """Return client `client_id`'s update delta: seeded, within the clipping range."""
    rng = np.random.default_rng([7, int(client_id.removeprefix("c"))])
    return rng.normal(0.0, 0.01, length)


def quantized_delta(client_id: str, length: int, weight: float, quantizer: Quantizer) -> np.ndarray:
    """Return the uint32 levels the client masks (the same rng the session is given)."""
    rng = np.random.default_rng([9, int(client_id.removeprefix("c"))])
    clipped = np.clip(
        known_delta(client_id, length), -quantizer.clipping_range, quantizer.clipping_range
    )
    return quantizer.quantize(clipped * weight, rng)


def run_clients(
    client: TestClient,
    plans: list[ClientPlan],
    server_round: int,
    round_config: Mapping[str, Any],
    length: int,
    *,
    before_unmask: Callable[[], None] | None = None,
) -> list[SecAggSession]:
    """Run every plan's session in its own thread until it ends; return the sessions."""
    channel = TestChannel(client)
    sessions = [
        SecAggSession(channel, p.client_id, server_round, round_config, wait_s=5.0) for p in plans
    ]
    masked_done = threading.Barrier(  # `before_unmask` runs before any client goes on
        sum(1 for p in plans if not p.drop_before_masked), action=before_unmask
    )

    def one(plan: ClientPlan, session: SecAggSession) -> None:
        try:
            session.prepare()
            if plan.drop_before_masked:
                return
            rng = np.random.default_rng([9, int(plan.client_id.removeprefix("c"))])
            session.submit(known_delta(plan.client_id, length), plan.num_examples, {}, rng)
            masked_done.wait(timeout=30)
            if plan.drop_before_unmask:
                return
            session.finish()
        except BaseException as exc:  # reported by the test
            plan.errors.append(exc)

    threads = [
        threading.Thread(target=one, args=pair) for pair in zip(plans, sessions, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return sessions


def expected_model(
    current: Mapping[str, np.ndarray],
    spec_names: list[str],
    summed: np.ndarray,
    total_weight: float,
    count: int,
    quantizer: Quantizer,
) -> dict[str, np.ndarray]:
    """Return x + dequantize(sum) / total_weight, computed here as the protocol specifies."""
    values = quantizer.dequantize_sum(summed, count)
    result = {}
    offset = 0
    for name in spec_names:
        array = current[name]
        size = array.size
        delta = values[offset : offset + size].reshape(array.shape) / total_weight
        result[name] = (array.astype(np.float64) + delta).astype(array.dtype)
        offset += size
    return result


_STEPS = ["advertise", "share", "collect", "submit", "finish"]
_STEPS_TO = {"keys": 0, "shares": 1, "masked": 3, "unmask": 4, "closed": 5}


class SteppedRound:
    """Ten honest sessions of round 1 moved stage by stage from the test's thread.

    Each step is done by every client in turn, so the test can act between two stages
    (hostile messages, inspection) and then finish the round and check its exact sum.
    """

    __test__ = False

    def __init__(self, client: TestClient, ids: list[str]) -> None:
        self.client = client
        self.ids = ids
        message = decode_message(client.get("/get_weights").content)
        self.config = message["config"]
        self.current = decode_weights(message["weights"])
        self.spec = spec_of(self.current)
        self.length = vector_length(self.spec)
        channel = TestChannel(client)
        self.sessions = {c: SecAggSession(channel, c, 1, self.config, wait_s=5.0) for c in ids}
        self.done: list[str] = []

    def to(self, stage: str) -> None:
        """Do every client's steps (those not done yet) until the attempt is in `stage`."""
        for name in _STEPS[: _STEPS_TO[stage]]:
            if name not in self.done:
                for session in self.sessions.values():
                    self._step(name, session)
                self.done.append(name)

    def _step(self, name: str, session: SecAggSession) -> None:
        if name == "advertise":
            session.advertise()
        elif name == "share":
            session.share()
        elif name == "collect":
            session.collect()
        elif name == "submit":
            self._submit(session)
        else:
            self._finish(session)

    def _submit(self, session: SecAggSession) -> None:
        rng = np.random.default_rng([9, int(session.client_id.removeprefix("c"))])
        session.submit(known_delta(session.client_id, self.length), 10, {}, rng)

    @staticmethod
    def _finish(session: SecAggSession) -> None:
        with contextlib.suppress(AttemptEnded):  # the sum was rebuilt before this client's turn
            session.finish()

    def expected(self, quantizer: Quantizer) -> dict[str, np.ndarray]:
        """Return the model the round must reach: the mean of the ten quantized deltas."""
        plain = np.zeros(self.length, np.uint64)
        for c in self.ids:
            plain += quantized_delta(c, self.length, 1.0, quantizer)
        count = len(self.ids)
        return expected_model(
            self.current, masked_names(self.spec), plain, float(count), count, quantizer
        )
