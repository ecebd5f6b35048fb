"""Request bodies: with and without Content-Length, under and over the limit."""

from __future__ import annotations

import asyncio
import mmap
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from aggregator_service.api.body import BodyPool, Pace, faulted_mapping, read_body
from aggregator_service.api.limits import JSON_BODY_LIMIT
from shared.errors import RequestTimeout
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    global_model,
    register,
    update_body,
    wait_for,
)


@pytest.fixture
def training(start_app: AppFactory) -> tuple[TestClient, dict[str, np.ndarray]]:
    """An aggregator in round 1 with clients a and b selected, and a 1 MiB body limit."""
    client = start_app(max_body_bytes=1 << 20)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    return client, weights


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_body_without_content_length_is_accepted(
    training: tuple[TestClient, dict[str, np.ndarray]],
) -> None:
    client, weights = training
    body = update_body("a", 1, weights)
    reply = client.post("/receive", content=_chunks(body), headers=MSGPACK)
    assert reply.status_code == 200, reply.text
    assert client.get("/status").json()["received_from"] == ["a"]


def test_chunked_body_over_the_limit_is_refused_while_streaming(
    training: tuple[TestClient, dict[str, np.ndarray]],
) -> None:
    client, weights = training
    body = update_body("a", 1, weights) + b"\x00" * (2 << 20)
    reply = client.post("/receive", content=_chunks(body, 1 << 16), headers=MSGPACK)
    assert reply.status_code == 413
    assert reply.json()["error"] == "body_too_large"
    assert client.get("/status").json()["received"] == 0


def test_body_read_into_a_preallocated_buffer_decodes_exactly(
    training: tuple[TestClient, dict[str, np.ndarray]],
) -> None:
    client, weights = training
    shifted = {k: (v + 1).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in weights.items()}
    for client_id, update in (("a", shifted), ("b", shifted)):
        body = update_body(client_id, 1, update)
        assert client.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(client, lambda s: s["round"] == 2)
    _, new = global_model(client)
    for name, array in shifted.items():
        np.testing.assert_array_equal(new[name], array)


# ----------------------------------------------------------------------- the body pool

MIB = 1 << 20


def test_small_bodies_get_plain_buffers_and_large_ones_a_mapping() -> None:
    pool = BodyPool(keep=2)
    assert isinstance(pool.take(1000).obj, bytearray)
    large = pool.take(2 * MIB)
    assert isinstance(large.obj, mmap.mmap)
    assert large.nbytes == 2 * MIB
    assert not large.readonly


def test_a_mapping_handed_on_is_reused_for_a_body_of_about_its_size() -> None:
    pool = BodyPool(keep=2)
    first = pool.take(2 * MIB)
    mapping = weakref.ref(first.obj)  # a strong reference would count as a live view
    first[:5] = b"first"
    pool.give_back(first, hand_on=True)
    with pytest.raises(ValueError, match="released"):
        first[0]
    second = pool.take(2 * MIB - 100)
    assert second.obj is mapping()
    assert second.nbytes == 2 * MIB - 100


def test_a_mapping_still_viewed_is_never_reused_and_keeps_its_bytes() -> None:
    pool = BodyPool(keep=2)
    first = pool.take(2 * MIB)
    first[:8] = b"original"
    reader = np.frombuffer(first[:8], dtype=np.uint8)  # e.g. a decoded tensor still alive
    mapping = weakref.ref(first.obj)
    pool.give_back(first, hand_on=True)
    second = pool.take(2 * MIB)
    assert second.obj is not mapping()
    second[:8] = b"new body"
    assert reader.tobytes() == b"original"


def test_nothing_is_kept_without_a_next_upload_or_for_another_size() -> None:
    pool = BodyPool(keep=2)
    first = pool.take(4 * MIB)
    mapping = weakref.ref(first.obj)
    pool.give_back(first, hand_on=False)
    assert mapping() is None  # unmapped and gone
    kept = pool.take(4 * MIB)
    kept_mapping = weakref.ref(kept.obj)
    pool.give_back(kept, hand_on=True)
    assert kept_mapping() is not None
    smaller = pool.take(2 * MIB)  # 4 MiB is too large to hold 2 MiB: unmapped, not kept
    assert smaller.obj is not kept_mapping()
    assert kept_mapping() is None


def test_at_most_keep_mappings_are_kept() -> None:
    pool = BodyPool(keep=1)
    bodies = [pool.take(2 * MIB) for _ in range(2)]
    mappings = [weakref.ref(body.obj) for body in bodies]
    for body in bodies:
        pool.give_back(body, hand_on=True)
    assert mappings[0]() is not None
    assert mappings[1]() is None
    assert pool.take(2 * MIB).obj is mappings[0]()


def test_a_faulted_mapping_is_zeroed_and_of_the_size_asked() -> None:
    mapping = faulted_mapping(3 * MIB + 5)
    assert len(mapping) == 3 * MIB + 5
    assert mapping[:] == bytes(3 * MIB + 5)


def test_stocked_mappings_are_taken_and_never_exceed_keep_with_bodies_in_use() -> None:
    pool = BodyPool(keep=2)
    assert pool.missing(in_use=0) == 2
    assert pool.missing(in_use=1) == 1
    stocked = [faulted_mapping(2 * MIB) for _ in range(3)]
    refs = [weakref.ref(m) for m in stocked]
    pool.stock(stocked, in_use=1)  # one body is held: only one more mapping may exist
    del stocked
    assert [ref() is not None for ref in refs] == [True, False, False]
    assert pool.missing(in_use=1) == 0
    body = pool.take(2 * MIB - 4096)
    assert body.obj is refs[0]()
    assert body.nbytes == 2 * MIB - 4096


def _stalling_request(pieces: list[bytes], *, declared: int | None) -> Request:
    """A request whose body sends `pieces`, then nothing more (a stalled client)."""
    headers = [(b"content-type", b"application/msgpack")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "method": "POST", "path": "/receive", "headers": headers}
    waiting = list(pieces)

    async def receive() -> dict[str, object]:
        if waiting:
            return {"type": "http.request", "body": waiting.pop(0), "more_body": True}
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    return Request(scope, receive)


@pytest.mark.parametrize("declared", [10_000, None], ids=["content-length", "chunked"])
def test_a_body_that_stops_arriving_is_refused_with_408(declared: int | None) -> None:
    request = _stalling_request([b"\x00" * 100, b"\x00" * 100], declared=declared)

    async def read() -> None:
        started = asyncio.get_running_loop().time()
        with pytest.raises(RequestTimeout) as refused:
            await read_body(request, 1 << 20, pace=Pace(idle_timeout_s=0.2))
        assert asyncio.get_running_loop().time() - started < 5
        assert refused.value.code == "body_timeout"
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0  # the limit took its own cancellation back

    asyncio.run(read())


def test_a_body_that_keeps_arriving_is_read_whatever_its_total_time() -> None:
    pieces = [bytes([i]) * 100 for i in range(6)]

    async def receive_slowly() -> dict[str, object]:
        await asyncio.sleep(0.08)  # 0.48 s in all, more than twice the idle limit
        return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}

    headers = [(b"content-length", b"600")]
    request = Request({"type": "http", "method": "POST", "headers": headers}, receive_slowly)
    body = asyncio.run(read_body(request, 1 << 20, pace=Pace(idle_timeout_s=0.2)))
    assert bytes(body) == b"".join(bytes([i]) * 100 for i in range(6))


def _dripping_request(piece: bytes, every_s: float, count: int) -> Request:
    """A request whose body arrives as `count` copies of `piece`, one every `every_s`."""
    left = [piece] * count

    async def receive() -> dict[str, object]:
        await asyncio.sleep(every_s)
        return {"type": "http.request", "body": left.pop(), "more_body": bool(left)}

    headers = [(b"content-length", str(len(piece) * count).encode())]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def test_a_body_slower_than_the_minimum_rate_after_its_grace_is_refused_with_408() -> None:
    pace = Pace(idle_timeout_s=5, min_rate_bytes_s=1000, grace_s=0.3)
    dripping = _dripping_request(b"\x00" * 10, 0.05, 100)  # 200 bytes/s: bytes keep coming

    async def read() -> float:
        started = asyncio.get_running_loop().time()
        with pytest.raises(RequestTimeout) as refused:
            await read_body(dripping, 1 << 20, pace=pace)
        assert refused.value.code == "body_too_slow"
        return asyncio.get_running_loop().time() - started

    assert 0.3 <= asyncio.run(read()) < 2  # the grace, then 0.3 s + 1 s per 1000 bytes in
    steady = _dripping_request(b"\x00" * 100, 0.05, 10)  # 2000 bytes/s, after the grace too
    assert len(asyncio.run(read_body(steady, 1 << 20, pace=pace))) == 1000


@pytest.mark.parametrize("path", ["/register", "/secagg/keys", "/secagg/shares", "/secagg/unmask"])
@pytest.mark.parametrize("chunked", [False, True])
def test_json_bodies_over_their_limit_are_refused_while_they_arrive(
    training: tuple[TestClient, dict[str, np.ndarray]], path: str, chunked: bool
) -> None:
    client, _ = training
    huge = b'{"client_id": "a", "padding": "' + b"x" * JSON_BODY_LIMIT + b'"}'
    content = _chunks(huge, 1 << 16) if chunked else huge
    reply = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == 413
    # FastAPI's max_body_size answers: plain text when Content-Length tells it at once,
    # the error table's body while streaming
    assert reply.text in (
        "Content Too Large",
        '{"error":"body_too_large","detail":"Content Too Large"}',
    )
    assert client.get("/status").json()["registered_clients"] == 2  # nothing changed
