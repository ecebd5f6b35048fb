"""Tests of aggregator_service/api/early_refusal.py: sure refusals are not journalled."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator_service.api.early_refusal import PREFIX_BYTES, EarlyRefusal, leading_fields
from aggregator_service.store.journal_stream import StreamedBody
from shared.wire import encode_message
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    needs_direct_io,
    register,
    update_body,
    wait_for,
)

_WEIGHTS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}


def _body(client_id: str = "a", server_round: int = 3) -> bytes:
    return update_body(client_id, server_round, _WEIGHTS, num_examples=7)


def _header_end(body: bytes) -> int:
    """Offset of the first byte after the "weights" key, which ends the header fields."""
    key = msgpack.packb("weights") + b"\x81"  # the key, then the map of _WEIGHTS' one tensor
    return body.index(key) + len(key) - 1


def test_the_header_fields_are_read_from_the_first_bytes() -> None:
    body = _body()
    fields, complete = leading_fields(body[: _header_end(body)])
    assert fields == {"protocol": 1, "client_id": "a", "round": 3, "num_examples": 7}
    assert complete


@given(
    client_id=st.text(max_size=40),
    server_round=st.integers(1, 2**40),
    num_examples=st.integers(1, 2**31),
    cut=st.floats(0.0, 1.0),
)
def test_any_prefix_gives_a_part_of_the_header_and_the_whole_once_it_is_in(
    client_id: str, server_round: int, num_examples: int, cut: float
) -> None:
    body = update_body(client_id, server_round, _WEIGHTS, num_examples=num_examples)
    header = {"protocol": 1, "client_id": client_id, "round": server_round}
    header["num_examples"] = num_examples
    length = int(cut * len(body))
    fields, complete = leading_fields(body[:length])
    assert fields.items() <= header.items()
    if length >= _header_end(body):
        assert (fields, complete) == (header, True)
    else:
        assert not complete


def test_bodies_without_a_leading_header_tell_nothing() -> None:
    weights_first = encode_message({"weights": _WEIGHTS, "client_id": "a", "round": 3})
    assert leading_fields(weights_first) == ({}, True)
    assert leading_fields(msgpack.packb([1, 2, 3])) == ({}, True)
    assert leading_fields(b"\xc1 not msgpack") == ({}, True)
    assert leading_fields(b"") == ({}, False)


class _Follower:
    """Records what a StreamedBody would be told."""

    def __init__(self) -> None:
        self.started = False
        self.advances: list[int] = []
        self.discarded = False

    def start(self, buffer: memoryview) -> None:
        self.started = True

    def advance(self, filled: int) -> None:
        self.advances.append(filled)

    def discard(self) -> None:
        self.discarded = True


class _State:
    def __init__(self, refused: bool) -> None:
        self.refused = refused
        self.asked: list[tuple[str, int]] = []

    def surely_refused(self, client_id: str, server_round: int) -> bool:
        self.asked.append((client_id, server_round))
        return self.refused


def _arrive(data: bytes, refused: bool, steps: list[int]) -> tuple[EarlyRefusal, _Follower, _State]:
    follower, state = _Follower(), _State(refused)
    watcher = EarlyRefusal(follower, state)  # type: ignore[arg-type]
    buffer = memoryview(bytearray(len(data)))
    watcher.start(buffer)
    for end in steps:
        buffer[:end] = data[:end]
        watcher.advance(end)
    return watcher, follower, state


def test_a_sure_refusal_stops_the_journal_before_anything_is_written() -> None:
    body = _body()
    watcher, follower, state = _arrive(body, refused=True, steps=[5, 30, len(body)])
    assert state.asked == [("a", 3)]
    assert watcher.refused
    assert follower.discarded
    assert follower.advances == []


def test_an_update_that_may_be_accepted_is_followed_once_its_header_is_in() -> None:
    body = _body()
    watcher, follower, state = _arrive(body, refused=False, steps=[5, 30, len(body)])
    assert state.asked == [("a", 3)]
    assert not watcher.refused
    assert not follower.discarded
    assert follower.advances == [30, len(body)]  # not the 5 bytes before the header


def test_a_body_whose_first_key_is_not_a_header_field_is_followed_at_once() -> None:
    late = encode_message({"metrics": {}, "client_id": "a", "round": 3, "weights": _WEIGHTS})
    _, follower, state = _arrive(late, refused=True, steps=[10, len(late)])
    assert state.asked == []
    assert follower.advances == [10, len(late)]


def test_a_header_longer_than_the_prefix_read_is_given_up_on() -> None:
    long_id = "x" * (2 * PREFIX_BYTES)
    body = update_body(long_id, 3, _WEIGHTS)
    _, follower, state = _arrive(body, refused=True, steps=[10, PREFIX_BYTES, len(body)])
    assert state.asked == []
    assert follower.advances == [PREFIX_BYTES, len(body)]


def test_only_final_refusals_are_sure(start_app: AppFactory) -> None:
    client = start_app(experiment(min_fit_clients=2, min_available_clients=2))
    register(client, "a", "b", "c")
    status = wait_for(client, lambda s: s["phase"] == "training")
    state = client.app.state.federation.state  # type: ignore[attr-defined]
    chosen = status["selected"][0]
    assert not state.surely_refused(chosen, 1)
    assert not state.surely_refused("not-registered", 1)  # a retried round may invite it
    assert not state.surely_refused(chosen, 2)  # a later round may still come
    _, weights = global_model(client)
    reply = client.post("/receive", content=update_body(chosen, 1, weights), headers=MSGPACK)
    assert reply.status_code == 200, reply.text
    assert state.surely_refused(chosen, 1)  # a duplicate now
    assert state.surely_refused(chosen, 0)  # a past round


@needs_direct_io
@pytest.mark.parametrize("resend", ["duplicate", "stale"])
def test_a_large_update_refused_for_good_writes_nothing_to_disk(
    start_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resend: str
) -> None:
    written: list[int] = []
    real_write = StreamedBody._write

    def recording_write(self: StreamedBody, start: int, end: int) -> None:
        written.append(end - start)
        real_write(self, start, end)

    monkeypatch.setattr(StreamedBody, "_write", recording_write)
    client = start_app(experiment(model="cnn", min_fit_clients=2, min_available_clients=2))
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    for client_id in ("a", "b"):
        reply = client.post("/receive", content=update_body(client_id, 1, weights), headers=MSGPACK)
        assert reply.status_code == 200, reply.text
    wait_for(client, lambda s: s["round"] == 2 and s["phase"] == "training")
    assert written  # the accepted updates went to disk while they arrived
    before = len(written)
    resent_round = 1 if resend == "stale" else 2
    if resend == "duplicate":
        first = client.post("/receive", content=update_body("a", 2, weights), headers=MSGPACK)
        assert first.status_code == 200, first.text
        before = len(written)
    again = client.post(
        "/receive", content=update_body("a", resent_round, weights), headers=MSGPACK
    )
    assert again.status_code == (200 if resend == "duplicate" else 409), again.text
    if resend == "duplicate":
        assert again.json()["duplicate"] is True
    assert written[before:] == []
    assert list((tmp_path / "state" / "updates" / "incoming").iterdir()) == []
