"""Tests of aggregator_service/store/updates.py: the journal of pending updates."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from aggregator_service.store.run_store import RunStore, StoreError


def _as_bytes(pending: Iterable[tuple[str, int, memoryview]]) -> list[tuple[str, int, bytes]]:
    """The pending updates with their bodies (memory maps) as bytes, for comparisons."""
    return [(client_id, n, bytes(body)) for client_id, n, body in pending]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "state") as run_store:
        yield run_store


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def test_update_round_trip_in_client_id_order(store: RunStore) -> None:
    store.updates.save(3, "client-b", 50, b"\x81\xa1a\x01")
    store.updates.save(3, "client-a", 20, bytearray(b"second"))
    store.updates.save(3, "client-c", 10, memoryview(b"third"), durable=False)
    store.updates.save(4, "client-a", 99, b"other round")
    assert _as_bytes(store.updates.pending(3)) == [  # by client id, not in the order they came
        ("client-a", 20, b"second"),
        ("client-b", 50, b"\x81\xa1a\x01"),
        ("client-c", 10, b"third"),
    ]
    assert _as_bytes(store.updates.pending(4)) == [("client-a", 99, b"other round")]
    assert _as_bytes(store.updates.pending(5)) == []


def test_duplicate_update_is_rejected_and_first_kept(store: RunStore) -> None:
    store.updates.save(1, "client-a", 10, b"first")
    with pytest.raises(StoreError, match=r"'client-a'.*round 1.*already saved"):
        store.updates.save(1, "client-a", 20, b"second")
    assert _as_bytes(store.updates.pending(1)) == [("client-a", 10, b"first")]
    assert len(_files(store.state_dir / "updates")) == 1


def test_drop_removes_files_and_rows(store: RunStore) -> None:
    store.updates.save(1, "client-a", 10, b"one")
    store.updates.save(2, "client-a", 10, b"two")
    store.updates.drop(1)
    assert _as_bytes(store.updates.pending(1)) == []
    assert not (store.state_dir / "updates" / "1").exists()
    assert _as_bytes(store.updates.pending(2)) == [("client-a", 10, b"two")]
    store.updates.save(1, "client-a", 11, b"again")  # the pair is free again
    assert _as_bytes(store.updates.pending(1)) == [("client-a", 11, b"again")]


def test_update_write_leaves_no_temp_files(store: RunStore) -> None:
    store.updates.save(1, "client-a", 10, b"x")
    names = _files(store.state_dir / "updates")
    assert len(names) == 1
    assert names[0].endswith(".msgpack")
    assert not names[0].startswith(".")


@pytest.mark.parametrize(
    "client_id", ["../x", "a/b", "../../etc/passwd", "名前-ü", "", ".", "a\\b", "x" * 500]
)
def test_weird_client_ids_stay_inside_the_state_dir(tmp_path: Path, client_id: str) -> None:
    state_dir = tmp_path / "state"
    with RunStore(state_dir) as store:
        store.updates.save(1, client_id, 5, b"payload")
        assert _as_bytes(store.updates.pending(1)) == [(client_id, 5, b"payload")]
    outside = [p for p in tmp_path.rglob("*") if state_dir not in p.parents and p != state_dir]
    assert outside == []
    (update_file,) = (state_dir / "updates" / "1").iterdir()
    assert update_file.parent == state_dir / "updates" / "1"


def test_corrupt_update_is_skipped_with_a_warning(
    store: RunStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.updates.save(1, "client-a", 10, b"good")
    store.updates.save(1, "client-b", 10, b"will be damaged")
    for path in (store.state_dir / "updates" / "1").iterdir():
        if path.read_bytes() == b"will be damaged":
            path.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING, logger="aggregator_service.store.updates"):
        assert _as_bytes(store.updates.pending(1)) == [("client-a", 10, b"good")]
    assert any("client-b" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("legacy", ["crc32", "sha256"])
def test_update_journaled_with_the_checksum_of_an_earlier_version_is_still_read(
    store: RunStore, legacy: str
) -> None:
    body = b"journaled by an earlier version"
    store.updates.save(1, "client-a", 10, body)
    with sqlite3.connect(store.state_dir / "run.sqlite3") as db:
        (recorded,) = db.execute("SELECT sha256 FROM updates").fetchone()
        assert recorded.startswith("sum64:")
        crc32, sha256 = f"crc32:{zlib.crc32(body):08x}", hashlib.sha256(body).hexdigest()
        db.execute("UPDATE updates SET sha256 = ?", (crc32 if legacy == "crc32" else sha256,))
    assert _as_bytes(store.updates.pending(1)) == [("client-a", 10, body)]


def test_drop_through_a_round_keeps_later_rounds(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        for server_round in (1, 2, 3):
            store.updates.save(server_round, "a", 1, b"round %d" % server_round)
        store.updates.drop_through(2)
        assert _as_bytes(store.updates.pending(1)) == []
        assert _as_bytes(store.updates.pending(2)) == []
        assert _as_bytes(store.updates.pending(3)) == [("a", 1, b"round 3")]
    left = sorted(p.name for p in (tmp_path / "updates").iterdir())
    assert left == ["3", "incoming"]  # close() waited for the deletions


def test_half_deleted_update_directories_are_removed_on_open(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        store.updates.save(1, "a", 1, b"x")
    (tmp_path / "updates" / "1").rename(tmp_path / "updates" / ".discarded-1-0000")
    with RunStore(tmp_path):
        assert [p.name for p in (tmp_path / "updates").iterdir()] == ["incoming"]
