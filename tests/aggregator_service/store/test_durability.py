"""The order of fsyncs and renames: a file's data, then its name, then the reply or return.

A SIGKILL keeps the page cache, so the crash tests cannot see a missing fsync; these
tests record every ``os.fsync`` and ``os.replace`` / ``os.rename`` (identifying files by
inode) and the moment a store call returns or an HTTP reply starts, and check the order:
the file's data is fsynced, it is renamed into place, its directory is fsynced, and only
then does the caller hear of it.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from aggregator_service.store.journal_stream import STEP
from aggregator_service.store.run_store import RunStore
from tests.aggregator_service.helpers import (
    MSGPACK,
    experiment,
    global_model,
    needs_direct_io,
    register,
    shifted,
    update_body,
    wait_for,
)

MIB = 1 << 20
Identity = tuple[int, int]  # (st_dev, st_ino): a file whatever its name


class Event(NamedTuple):
    """One durable step: "file fsync", "dir fsync", "rename" or "mark"."""

    kind: str
    identity: Identity | None
    where: str  # the fd's path, the rename's target, or the mark's label


class DiskLog:
    """Records fsyncs, renames and marks in the order they complete, from any thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd: Any) -> None:
            info = os.fstat(fd)
            real_fsync(fd)
            kind = "dir fsync" if stat.S_ISDIR(info.st_mode) else "file fsync"
            self._add(Event(kind, _identity(info), _fd_path(fd)))

        def renamer(real: Any) -> Any:
            def rename(src: Any, dst: Any, **kwargs: Any) -> None:
                info = os.stat(src, dir_fd=kwargs.get("src_dir_fd"))
                real(src, dst, **kwargs)
                self._add(Event("rename", _identity(info), os.fsdecode(dst)))

            return rename

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", renamer(real_replace))
        monkeypatch.setattr(os, "rename", renamer(real_rename))

    def mark(self, label: str) -> None:
        """Record that the caller has been told (a store call returned, a reply started)."""
        self._add(Event("mark", None, label))

    def check_durable(self, path: Path, mark: str) -> None:
        """Assert: data of `path` fsynced -> renamed to `path` -> its dir fsynced -> `mark`."""
        events = list(self.events)
        marks = [i for i, e in enumerate(events) if e == Event("mark", None, mark)]
        assert marks, f"no mark {mark!r}: {events}"
        end = marks[0]
        file_id, dir_id = _identity(os.stat(path)), _identity(os.stat(path.parent))
        renames = [
            i for i, e in enumerate(events[:end]) if e == Event("rename", file_id, str(path))
        ]
        assert renames, f"{path} was not renamed into place before {mark!r}: {events}"
        placed = renames[-1]
        data_synced = [e for e in events[:placed] if e[:2] == ("file fsync", file_id)]
        assert data_synced, f"the data of {path} was not fsynced before its rename: {events}"
        dir_synced = [e for e in events[placed:end] if e[:2] == ("dir fsync", dir_id)]
        assert dir_synced, f"{path.parent} was not fsynced between the rename and {mark!r}"

    def check_dir_synced(self, directory: Path, mark: str) -> None:
        """Assert that `directory` was fsynced before `mark` (a new entry in it is durable)."""
        events = list(self.events)
        end = events.index(Event("mark", None, mark))
        dir_id = _identity(os.stat(directory))
        assert any(e[:2] == ("dir fsync", dir_id) for e in events[:end]), events

    def _add(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)


def _identity(info: os.stat_result) -> Identity:
    return info.st_dev, info.st_ino


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


@pytest.fixture
def disk_log(monkeypatch: pytest.MonkeyPatch) -> DiskLog:
    return DiskLog(monkeypatch)


def _only_file(directory: Path) -> Path:
    """The one file in `directory` (temp files, which start with ".", are not counted)."""
    found = [p for p in directory.iterdir() if not p.name.startswith(".")]
    assert len(found) == 1, found
    return found[0]


def _aligned(data: bytes) -> memoryview:
    """`data` in a page-aligned buffer, as upload slots hand out (direct I/O possible)."""
    buffer = memoryview(mmap.mmap(-1, len(data), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
    buffer[:] = data
    return buffer


def _payload(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------------------ the store


def test_a_checkpoint_is_fsynced_renamed_and_its_directory_fsynced_before_returning(
    tmp_path: Path, disk_log: DiskLog
) -> None:
    with RunStore(tmp_path / "state") as store:
        store.save_checkpoint(1, {"w": np.arange(6, dtype=np.float32)})
        disk_log.mark("returned")
        checkpoint = _only_file(tmp_path / "state" / "checkpoints")
        disk_log.check_durable(checkpoint, "returned")


def _write_buffered(store: RunStore) -> None:
    store.updates.save(1, "a", 3, _payload(100_000))


def _write_direct(store: RunStore) -> None:
    store.updates.save(1, "a", 3, _aligned(_payload(2 * MIB + 100)))


def _write_streamed(store: RunStore) -> None:
    data = _payload(2 * STEP + 100)
    buffer = _aligned(bytes(len(data)))
    streamed = store.updates.stream()
    streamed.start(buffer)
    for start in range(0, len(data), 300_000):
        end = min(start + 300_000, len(data))
        buffer[start:end] = data[start:end]
        streamed.advance(end)
    store.updates.save(1, "a", 3, buffer, streamed)


@pytest.mark.parametrize(
    "write",
    [
        _write_buffered,
        pytest.param(_write_direct, marks=needs_direct_io),
        pytest.param(_write_streamed, marks=needs_direct_io),
    ],
    ids=["buffered", "direct", "streamed"],
)
def test_an_update_and_its_round_directory_are_durable_before_save_returns(
    tmp_path: Path, disk_log: DiskLog, write: Any
) -> None:
    with RunStore(tmp_path / "state") as store:
        write(store)
        disk_log.mark("returned")
        updates = tmp_path / "state" / "updates"
        disk_log.check_durable(_only_file(updates / "1"), "returned")
        disk_log.check_dir_synced(updates, "returned")  # the new round directory's entry


def test_without_persistence_an_update_is_journalled_but_never_fsynced(
    tmp_path: Path, disk_log: DiskLog
) -> None:
    data = bytes(range(256)) * 9000  # 2.3 MB: large enough for direct I/O where it works
    with RunStore(tmp_path / "state") as store:
        store.updates.save(1, "a", 3, data, durable=False)
        assert [bytes(body) for _, _, body in store.updates.pending(1)] == [data]
    assert [e for e in disk_log.events if e.kind.endswith("fsync")] == []
    assert [e.kind for e in disk_log.events] == ["rename"]  # still renamed whole into place


# ---------------------------------------------------------------------------- the service


class MarkReplies:
    """ASGI middleware: marks the disk log when a POST /receive reply starts."""

    def __init__(self, app: ASGIApp, disk_log: DiskLog) -> None:
        self.app = app
        self.disk_log = disk_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/receive":
            await self.app(scope, receive, send)
            return

        async def marking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.disk_log.mark(f"reply {message['status']}")
            await send(message)

        await self.app(scope, receive, marking_send)


@pytest.fixture
def served(tmp_path: Path, disk_log: DiskLog) -> Iterator[Any]:
    """Start an app whose /receive replies are marked in the disk log."""
    clients: list[TestClient] = []

    def start(model: str) -> TestClient:
        settings = AggregatorSettings(state_dir=tmp_path / "state")
        app = create_app(settings, experiment(model=model))
        client = TestClient(MarkReplies(app, disk_log))
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.mark.parametrize(
    "model",
    ["mlp", pytest.param("cnn", marks=needs_direct_io)],
    ids=["2NN, written whole", "CNN, streamed while it arrives"],
)
def test_an_accepted_update_is_durable_before_the_reply(
    served: Any, tmp_path: Path, disk_log: DiskLog, model: str
) -> None:
    client = served(model)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    _, weights = global_model(client)
    body = update_body("a", 1, shifted(weights, 0.01))
    reply = client.post("/receive", content=body, headers=MSGPACK)
    assert reply.status_code == 200, reply.text
    assert reply.json()["duplicate"] is False
    updates = tmp_path / "state" / "updates"
    disk_log.check_durable(_only_file(updates / "1"), "reply 200")
    disk_log.check_dir_synced(updates, "reply 200")
