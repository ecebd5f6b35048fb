"""Hostile secure-aggregation messages during a real round: each gets its clear 4xx, the
round goes on, and its sum is still exact.

Ten honest sessions move stage by stage (`SteppedRound`); between two stages the test
sends what a faulty or hostile client would: a bad share, a vector of the wrong length
or outside the ring, a replay, a message for another round or attempt, an unknown
client, a message for another stage. One client seals garbage for a neighbour and
another reveals a wrong share: the honest clients and the aggregator pass over them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from aggregator_service.federation.federation import Federation
from shared.secagg.messages import SEALED_BYTES
from shared.secagg.shamir import PRIME, SHARE_BYTES, decode_share, encode_share
from shared.wire import encode_message
from tests.aggregator_service.federation.secagg_clients import SteppedRound, TestChannel
from tests.aggregator_service.federation.test_secagg_rounds import IDS, secagg_experiment
from tests.aggregator_service.helpers import MSGPACK, AppFactory, register, wait_for

MODULUS = 1 << 30  # below 2^32, so a uint32 can fall outside the ring


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def expect(reply: Any, status: int, code: str) -> None:
    """Assert an error answer with its status and code."""
    assert (reply.status_code, reply.json().get("error")) == (status, code), reply.text


class Hostile(TestChannel):
    """A channel that lets a test rewrite a client's JSON messages before they are sent."""

    __test__ = False

    def __init__(self, client: TestClient, rewrite: dict[str, Any]) -> None:
        super().__init__(client)
        self.rewrite = rewrite

    def secagg_post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST, the body rewritten by `rewrite[path]` when there is one."""
        change = self.rewrite.get(path)
        return super().secagg_post(path, change(dict(body)) if change else body)


@pytest.fixture
def stepped(start_app: AppFactory) -> SteppedRound:
    """Ten registered clients, round 1 attempt 0 in stage keys, modulus 2^30."""
    options = {"modulus": MODULUS, "quantization_range": 1 << 20, "stage_timeout_s": 10.0}
    client = start_app(secagg_experiment(secagg=options))
    register(client, *IDS)
    wait_for(client, lambda s: s["phase"] == "training")
    return SteppedRound(client, IDS)


def keys_body(client_id: str, **fields: Any) -> dict[str, Any]:
    body = {"client_id": client_id, "round": 1, "attempt": 0}
    body |= {"c_pk": b64(b"c" * 32), "s_pk": b64(b"s" * 32), "b_commit": b64(bytes(32))}
    return body | fields


def masked_body(round_: SteppedRound, client_id: str, vector: np.ndarray, **fields: Any) -> bytes:
    message = {
        "protocol": 1,
        "client_id": client_id,
        "round": 1,
        "attempt": 0,
        "num_examples": 10,
        "masked": vector,
    }
    return encode_message(message | fields)


def test_hostile_messages_get_clear_errors_and_the_sum_stays_exact(
    stepped: SteppedRound, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = stepped.client
    post = client.post
    federation: Federation = client.app.state.federation  # type: ignore[attr-defined]

    # Stage keys: an unknown client, another round or attempt, equal keys, bad encodings.
    expect(post("/secagg/keys", json=keys_body("zz")), 409, "not_selected")
    expect(post("/secagg/keys", json=keys_body("c0", round=2)), 409, "stale_attempt")
    expect(post("/secagg/keys", json=keys_body("c0", attempt=1)), 409, "stale_attempt")
    same = b64(b"k" * 32)
    expect(post("/secagg/keys", json=keys_body("c0", c_pk=same, s_pk=same)), 422, "invalid_secagg")
    expect(post("/secagg/keys", json=keys_body("c0", c_pk=b64(b"k" * 31))), 422, "invalid_request")
    expect(post("/secagg/keys", json=keys_body("c0", s_pk="not base64!")), 422, "invalid_request")
    expect(post("/secagg/keys", json=keys_body("c0", extra=1)), 422, "invalid_request")
    shares = {"client_id": "c0", "round": 1, "attempt": 0, "shares": {}}
    expect(post("/secagg/shares", json=shares), 409, "wrong_stage")
    c0 = stepped.sessions["c0"]
    c0.advertise()
    advertised = federation.state.round.secagg
    assert advertised is not None
    copied = b64(advertised.keys["c0"].s_pk)
    expect(post("/secagg/keys", json=keys_body("c9", s_pk=copied)), 422, "invalid_secagg")
    c0.advertise()  # a replay: the same keys again
    other = keys_body("c0", c_pk=b64(b"x" * 32), s_pk=b64(b"y" * 32))
    expect(post("/secagg/keys", json=other), 409, "already_posted")

    # Stage shares: wrong receivers, a short ciphertext, an outsider; c3 seals garbage for c4.
    stepped.to("shares")
    neighbours = {c: b64(bytes(SEALED_BYTES)) for c in IDS if c != "c0"}
    missing = dict(list(neighbours.items())[1:])
    expect(post("/secagg/shares", json=shares | {"shares": missing}), 422, "invalid_secagg")
    extra = neighbours | {"zz": b64(bytes(SEALED_BYTES))}
    expect(post("/secagg/shares", json=shares | {"shares": extra}), 422, "invalid_secagg")
    short = neighbours | {"c1": b64(bytes(SEALED_BYTES - 1))}
    expect(post("/secagg/shares", json=shares | {"shares": short}), 422, "invalid_request")
    outsider = shares | {"client_id": "zz", "shares": neighbours}
    expect(post("/secagg/shares", json=outsider), 409, "not_participant")
    params = {"client_id": "c0", "round": 1, "attempt": 0}
    expect(client.get("/secagg/shares", params=params), 409, "not_participant")

    def garbage_for_c4(body: dict[str, Any]) -> dict[str, Any]:
        return body | {"shares": body["shares"] | {"c4": b64(b"\x01" * SEALED_BYTES)}}

    stepped.sessions["c3"].channel = Hostile(client, {"shares": garbage_for_c4})
    stepped.to("masked")
    assert "c3" not in stepped.sessions["c4"].held  # left out, not fatal

    # Stage masked: wrong length and dtype, outside the ring, other attempt, replays.
    length = stepped.length
    ring = np.zeros(length, np.uint32)
    for vector, status, code in [
        (np.zeros(length - 1, np.uint32), 422, "invalid_tensor"),
        (np.zeros(length, np.float32), 422, "invalid_tensor"),
        (ring + np.uint32(MODULUS), 422, "invalid_secagg"),
    ]:
        reply = post("/secagg/masked", content=masked_body(stepped, "c0", vector), headers=MSGPACK)
        expect(reply, status, code)
    reply = post(
        "/secagg/masked", content=masked_body(stepped, "c0", ring, attempt=1), headers=MSGPACK
    )
    expect(reply, 409, "stale_attempt")
    reply = post("/secagg/masked", content=masked_body(stepped, "zz", ring), headers=MSGPACK)
    expect(reply, 409, "not_participant")
    reply = post(
        "/secagg/masked", content=masked_body(stepped, "c0", ring, num_examples=0), headers=MSGPACK
    )
    expect(reply, 422, "invalid_secagg")
    reply = post(
        "/secagg/masked",
        content=masked_body(stepped, "c0", ring),
        headers={"content-type": "application/json"},
    )
    expect(reply, 415, "unsupported_media_type")
    unmask = {"client_id": "c0", "round": 1, "attempt": 0, "b_shares": {}, "sk_shares": {}}
    expect(post("/secagg/unmask", json=unmask), 409, "wrong_stage")
    assert federation.state.round.secagg is not None
    assert federation.state.round.secagg.masked_sum is None  # nothing hostile was summed

    sent: list[bytes] = []
    original = TestChannel.post_masked

    def recording(channel: TestChannel, message: Mapping[str, Any]) -> dict[str, Any]:
        sent.append(encode_message(message))
        return original(channel, message)

    monkeypatch.setattr(TestChannel, "post_masked", recording)
    stepped.to("unmask")
    monkeypatch.undo()
    replay = post("/secagg/masked", content=sent[0], headers=MSGPACK)
    assert (replay.status_code, replay.json()["duplicate"]) == (200, True), replay.text
    altered = masked_body(stepped, "c0", ring + np.uint32(1))
    expect(post("/secagg/masked", content=altered, headers=MSGPACK), 409, "already_posted")

    # Stage unmask: a share past the field, shares nobody asked for, an outsider; c1
    # reveals a wrong (well-formed) share of c2's seed, which the rebuild passes over.
    too_big = b64((PRIME + 1).to_bytes(SHARE_BYTES, "big"))
    expect(
        post("/secagg/unmask", json=unmask | {"b_shares": {"c1": too_big}}), 422, "invalid_secagg"
    )
    zero = b64(bytes(SHARE_BYTES))
    expect(post("/secagg/unmask", json=unmask | {"b_shares": {"zz": zero}}), 422, "invalid_secagg")
    expect(post("/secagg/unmask", json=unmask | {"sk_shares": {"c1": zero}}), 422, "invalid_secagg")
    expect(post("/secagg/unmask", json=unmask | {"client_id": "zz"}), 409, "not_survivor")

    def wrong_share_of_c2(body: dict[str, Any]) -> dict[str, Any]:
        share = decode_share(base64.b64decode(body["b_shares"]["c2"]))
        wrong = b64(encode_share((share + 1) % PRIME))
        return body | {"b_shares": body["b_shares"] | {"c2": wrong}}

    stepped.sessions["c1"].channel = Hostile(client, {"unmask": wrong_share_of_c2})
    stepped.to("closed")
    wait_for(client, lambda s: s["phase"] == "finished")
    (row,) = client.get("/history").json()
    assert (row["attempts"], row["participants"]) == (1, IDS)
    expected = stepped.expected(federation.config.secagg.quantizer())
    new = federation.state.global_weights
    for name, array in expected.items():
        assert np.array_equal(new[name], array), name
