"""Tests of aggregator_service/store/journal_stream.py: update bodies written while they arrive."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from aggregator_service.store import journal
from aggregator_service.store.journal_stream import STEP, StreamedBody
from aggregator_service.store.run_store import RunStore, StoreError
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

MIB = 1 << 20


def _as_bytes(pending: Iterable[tuple[str, int, memoryview]]) -> list[tuple[str, int, bytes]]:
    """The pending updates with their bodies (memory maps) as bytes, for comparisons."""
    return [(client_id, n, bytes(body)) for client_id, n, body in pending]


def _payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _buffer(size: int) -> memoryview:
    """A page-aligned, zeroed buffer, as upload slots hand out."""
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as pool:
        yield pool


def _arrive(streamed: StreamedBody, buffer: memoryview, data: bytes, chunk: int) -> None:
    """Fill `buffer` with `data` `chunk` bytes at a time, telling `streamed` as a socket would."""
    streamed.start(buffer)
    for start in range(0, len(data), chunk):
        end = min(start + chunk, len(data))
        buffer[start:end] = data[start:end]
        streamed.advance(end)


def _streamed(store: RunStore, data: bytes, chunk: int) -> tuple[StreamedBody, memoryview]:
    """A body of exactly `data` that has arrived whole, followed by the store's streamer."""
    streamed, buffer = store.updates.stream(), _buffer(len(data))
    _arrive(streamed, buffer, data, chunk)
    return streamed, buffer


def _wait_for_size(path: Path, size: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = path.stat().st_size if path.exists() else 0
        if current >= size:
            return current
        time.sleep(0.005)
    return path.stat().st_size if path.exists() else 0


@needs_direct_io
@pytest.mark.parametrize("size", [MIB, 3 * STEP + 4097, 2 * STEP], ids=lambda s: f"{s}B")
@pytest.mark.parametrize("chunk", [65_536, 999_999])
def test_a_streamed_body_is_written_whole_with_its_crc(
    tmp_path: Path, executor: ThreadPoolExecutor, size: int, chunk: int
) -> None:
    data = _payload(size, seed=size)
    buffer = _buffer(size)
    streamed = StreamedBody(tmp_path, executor)
    _arrive(streamed, buffer, data, chunk)
    written = streamed.finish(buffer)
    assert written is not None
    path, checksum = written
    assert path.read_bytes() == data
    assert checksum == journal.checksum(data)
    assert not streamed.following


@needs_direct_io
def test_the_body_goes_to_disk_before_it_is_finished(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    data = _payload(4 * STEP, seed=3)
    buffer = _buffer(len(data))
    streamed = StreamedBody(tmp_path, executor)
    _arrive(streamed, buffer, data[: 3 * STEP], STEP)  # three quarters arrived so far
    assert _wait_for_size(streamed.path, 3 * STEP) == 3 * STEP  # written, nothing beyond
    _arrive_rest = data[3 * STEP :]
    buffer[3 * STEP :] = _arrive_rest
    streamed.advance(len(data))
    written = streamed.finish(buffer)
    assert written is not None
    assert written[0].read_bytes() == data


@needs_direct_io
def test_a_discarded_body_leaves_no_file(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    data = _payload(3 * STEP, seed=4)
    buffer = _buffer(len(data))
    streamed = StreamedBody(tmp_path, executor)
    _arrive(streamed, buffer, data, STEP)
    streamed.discard()
    assert not streamed.following
    assert list(tmp_path.iterdir()) == []
    streamed.advance(len(data))  # late news from the socket changes nothing
    assert list(tmp_path.iterdir()) == []


def test_small_or_unaligned_bodies_are_not_followed(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    small = StreamedBody(tmp_path, executor)
    small.start(_buffer(MIB - 1))
    assert not small.following
    unaligned = StreamedBody(tmp_path, executor)
    unaligned.start(_buffer(2 * MIB + 4096)[1:])
    assert not unaligned.following
    assert unaligned.finish(bytes(2 * MIB)) is None


@needs_direct_io
def test_a_body_shorter_than_its_buffer_is_left_to_the_ordinary_write(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    data = _payload(2 * MIB, seed=5)
    buffer = _buffer(2 * MIB + 8192)
    streamed = StreamedBody(tmp_path, executor)
    _arrive(streamed, buffer, data, 65_536)
    assert streamed.finish(buffer[: len(data)]) is None
    assert list(tmp_path.iterdir()) == []


def test_a_filesystem_without_direct_io_falls_back_to_the_ordinary_write(
    tmp_path: Path, executor: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing_open(path: object, flags: int, *args: object) -> int:
        if journal.O_DIRECT and flags & journal.O_DIRECT:
            raise OSError(errno.EINVAL, "direct I/O refused")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    data = _payload(3 * STEP, seed=6)
    with RunStore(tmp_path / "state") as store:
        streamed, buffer = _streamed(store, data, STEP)
        store.updates.save(1, "a", 7, buffer, streamed)
        assert _as_bytes(store.updates.pending(1)) == [("a", 7, data)]
    assert list((tmp_path / "state" / "updates" / "incoming").iterdir()) == []


@needs_direct_io
def test_a_refused_direct_write_falls_back_to_the_ordinary_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite_refusing_beyond_a_step(fd: int, data: memoryview, offset: int) -> int:
        direct = fcntl.fcntl(fd, fcntl.F_GETFL) & journal.O_DIRECT
        if direct and offset + len(data) > STEP:  # a device that refuses some direct writes
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    data = _payload(3 * STEP, seed=9)
    with RunStore(tmp_path) as store:
        monkeypatch.setattr(os, "pwrite", pwrite_refusing_beyond_a_step)
        streamed, buffer = _streamed(store, data, STEP)
        store.updates.save(1, "a", 2, buffer, streamed)
        monkeypatch.undo()
        assert _as_bytes(store.updates.pending(1)) == [("a", 2, data)]
    assert refused  # the streamed write was refused, and the whole body written instead
    assert list((tmp_path / "updates" / "incoming").iterdir()) == []


@needs_direct_io
def test_the_store_places_a_streamed_body_in_its_round(tmp_path: Path) -> None:
    data = _payload(2 * STEP + 100, seed=7)
    with RunStore(tmp_path) as store:
        streamed, buffer = _streamed(store, data, 300_000)
        store.updates.save(2, "b", 3, buffer, streamed)
        assert _as_bytes(store.updates.pending(2)) == [("b", 3, data)]
    assert list((tmp_path / "updates" / "incoming").iterdir()) == []
    assert len(list((tmp_path / "updates" / "2").iterdir())) == 1


@needs_direct_io
def test_a_failed_write_is_a_store_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    data = _payload(2 * STEP, seed=8)
    with RunStore(tmp_path) as store:
        monkeypatch.setattr(os, "pwrite", full_disk)
        streamed, buffer = _streamed(store, data, STEP)
        with pytest.raises(StoreError, match="No space left"):
            store.updates.save(1, "a", 1, buffer, streamed)
        assert streamed.following  # the caller discards it, as the route does
        streamed.discard()
        assert _as_bytes(store.updates.pending(1)) == []
    assert list((tmp_path / "updates" / "incoming").iterdir()) == []


def test_left_over_temp_files_are_swept_at_start(tmp_path: Path) -> None:
    with RunStore(tmp_path):
        pass
    leftover = tmp_path / "updates" / "incoming" / ".0123abcd.tmp"
    leftover.write_bytes(b"half a body")
    with RunStore(tmp_path):
        assert not leftover.exists()


@needs_direct_io
def test_the_service_streams_large_updates_and_sweeps_refused_ones(
    start_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished: list[bool] = []
    real_finish = StreamedBody.finish

    def recording_finish(
        self: StreamedBody, body: memoryview, *, durable: bool = True
    ) -> tuple[Path, str] | None:
        written = real_finish(self, body, durable=durable)
        finished.append(written is not None)
        return written

    monkeypatch.setattr(StreamedBody, "finish", recording_finish)
    client = start_app(experiment(model="cnn", min_fit_clients=3, min_available_clients=3))
    register(client, "a", "b", "c")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    first = next(iter(weights))
    poisoned = {**weights, first: np.full_like(weights[first], np.nan)}
    refused = client.post("/receive", content=update_body("b", 1, poisoned), headers=MSGPACK)
    assert refused.status_code == 422
    accepted = client.post("/receive", content=update_body("a", 1, weights), headers=MSGPACK)
    assert accepted.status_code == 200, accepted.text
    again = client.post("/receive", content=update_body("a", 1, weights), headers=MSGPACK)
    assert again.json()["duplicate"] is True
    assert finished == [True]  # only the accepted update was saved, from what was streamed
    state = tmp_path / "state" / "updates"
    assert list((state / "incoming").iterdir()) == []
    assert len(list((state / "1").iterdir())) == 1
