"""Tests of aggregator_service/store/journal.py: writing update files, and their checksums."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator_service.store import journal
from aggregator_service.store.run_store import RunStore, StoreError

MIB = 1 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _mapped(data: bytes) -> memoryview:
    """Return `data` in a fresh anonymous mapping: page-aligned, as upload bodies are."""
    mapping = mmap.mmap(-1, len(data), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping[:] = data
    return memoryview(mapping)


def _record_open_flags(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    flags_seen: list[int] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object) -> int:
        flags_seen.append(flags)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    return flags_seen


@pytest.mark.parametrize(
    "size", [0, 1, 4096, MIB - 1, MIB, 3 * MIB + 123, 2 * MIB], ids=lambda s: f"{s}B"
)
def test_written_file_holds_exactly_the_body(tmp_path: Path, size: int) -> None:
    data = _payload(size)
    path = tmp_path / "update.msgpack"
    journal.write_file(path, _mapped(data) if size else data)
    assert path.read_bytes() == data


@pytest.mark.skipif(not _O_DIRECT, reason="this system has no O_DIRECT")
def test_large_aligned_body_goes_direct_and_its_tail_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _payload(2 * MIB + 777, seed=1)
    flags_seen = _record_open_flags(monkeypatch)
    path = tmp_path / "direct.msgpack"
    journal.write_file(path, _mapped(data))
    assert path.read_bytes() == data
    if flags_seen[-1] & _O_DIRECT:  # the filesystem of tmp_path took direct I/O
        assert len(flags_seen) == 1
    else:  # it refused (e.g. tmpfs): the same file was opened again, buffered
        assert flags_seen[0] & _O_DIRECT
        assert len(flags_seen) == 2


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda data: memoryview(_mapped(b"\0" + data))[1:], id="unaligned-view"),
        pytest.param(lambda data: data[: MIB - 1], id="small"),
    ],
)
def test_unaligned_or_small_bodies_are_written_buffered(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: Callable[[bytes], bytes | memoryview],
) -> None:
    data = _payload(2 * MIB, seed=2)
    flags_seen = _record_open_flags(monkeypatch)
    path = tmp_path / "buffered.msgpack"
    written = body(data)
    journal.write_file(path, written)
    assert path.read_bytes() == bytes(written)
    assert flags_seen
    assert not any(flags & _O_DIRECT for flags in flags_seen)


@pytest.mark.skipif(not _O_DIRECT, reason="this system has no O_DIRECT")
def test_a_filesystem_refusing_direct_io_gets_a_buffered_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct_open(path: object, flags: int, *args: object) -> int:
        if flags & _O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_direct_open)
    data = _payload(2 * MIB, seed=3)
    path = tmp_path / "fallback.msgpack"
    journal.write_file(path, _mapped(data))
    assert path.read_bytes() == data


@pytest.mark.skipif(not _O_DIRECT, reason="this system has no O_DIRECT")
def test_a_device_refusing_the_direct_write_gets_the_rest_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = {"n": 0}

    def write_refusing_once(fd: int, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the first direct write went through, the second is refused
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data[: 1 << 16] if calls["n"] == 1 else data)

    monkeypatch.setattr(os, "write", write_refusing_once)
    data = _payload(2 * MIB + 5, seed=4)
    path = tmp_path / "partial.msgpack"
    journal.write_file(path, _mapped(data))
    assert path.read_bytes() == data


def test_other_write_errors_propagate_and_an_existing_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "taken.msgpack"
    path.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        journal.write_file(path, b"second")
    assert path.read_bytes() == b"first"


def _sum64_by_hand(data: bytes) -> str:
    """Sum64 computed the slow, obvious way: sector by sector, word by word."""
    plain = weighted = 0
    for number, start in enumerate(range(0, len(data), journal.SECTOR), start=1):
        sector = data[start : start + journal.SECTOR]
        sector += bytes(-len(sector) % 8)
        total = sum(int.from_bytes(sector[i : i + 8], "little") for i in range(0, len(sector), 8))
        plain += total
        weighted += number * (total % 2**64)
    return f"sum64:{len(data)}:{plain % 2**64:016x}{weighted % 2**64:016x}"


@pytest.mark.parametrize("size", [0, 1, 8, 4095, 4096, 3 * 4096 + 13, 40_000])
def test_checksum_is_sum64_as_computed_by_hand(size: int) -> None:
    data = _payload(size, seed=size)
    assert journal.checksum(memoryview(data)) == _sum64_by_hand(data)
    assert journal.matches(data, journal.checksum(data))


def test_sum64_fed_in_sectors_equals_it_in_one_go() -> None:
    data = _payload(5 * 4096 + 100, seed=9)
    total = journal.Sum64()
    for start in (0, 4096, 3 * 4096):
        end = {0: 4096, 4096: 3 * 4096, 3 * 4096: len(data)}[start]
        total.update(data[start:end])
    assert total.text() == journal.checksum(data)
    with pytest.raises(ValueError, match="inside a sector"):
        total.update(b"more")


@pytest.mark.parametrize(
    "damage",
    ["bit flip", "zeroed sector", "swapped sectors", "cut short", "one more byte"],
)
def test_checksum_catches_the_damage_a_journal_file_can_take(damage: str) -> None:
    data = _payload(3 * MIB + 1, seed=5)
    recorded = journal.checksum(memoryview(data))
    damaged = bytearray(data)
    if damage == "bit flip":
        damaged[MIB] ^= 0x01
    elif damage == "zeroed sector":
        damaged[8192:12288] = bytes(4096)
    elif damage == "swapped sectors":
        damaged[0:4096], damaged[4096:8192] = data[4096:8192], data[0:4096]
    elif damage == "cut short":
        del damaged[-1]
    else:
        damaged += b"\x00"
    assert not journal.matches(bytes(damaged), recorded)


def test_rows_of_earlier_versions_are_checked_by_their_crc32_or_sha256() -> None:
    data = b"an update journaled by an earlier version"
    assert journal.matches(data, f"crc32:{zlib.crc32(data):08x}")
    assert not journal.matches(data + b"!", f"crc32:{zlib.crc32(data):08x}")
    assert journal.matches(data, hashlib.sha256(data).hexdigest())
    assert not journal.matches(data + b"!", hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("size", [100, 2 * MIB], ids=["buffered", "direct"])
def test_a_full_disk_fails_the_write_and_the_store_keeps_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    def disk_full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with RunStore(tmp_path / "state") as store:
        monkeypatch.setattr(os, "write", disk_full)
        with pytest.raises(StoreError, match="No space left"):
            store.updates.save(1, "client-a", 10, _mapped(_payload(size, seed=6)))
        monkeypatch.undo()
        assert list(store.updates.pending(1)) == []
        assert not [p for p in (store.state_dir / "updates").rglob("*") if p.is_file()]


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3 * 4096 + 50),
    where=st.integers(min_value=0),
    change=st.integers(min_value=1, max_value=255),
)
def test_sum64_notices_any_changed_byte_and_any_cut(data: bytes, where: int, change: int) -> None:
    recorded = journal.checksum(data)
    damaged = bytearray(data)
    damaged[where % len(data)] ^= change
    assert not journal.matches(bytes(damaged), recorded)
    assert not journal.matches(data[: where % len(data)], recorded)
