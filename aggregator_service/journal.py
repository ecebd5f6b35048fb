"""Writing one accepted update to disk durably, and checking it when it is read back.

An update body is written once, read back only after a crash, and deleted when its round
is checkpointed, so it has no business in the page cache. Where the filesystem allows it,
the body goes to disk with ``O_DIRECT``: the device reads it straight from the body's own
page-aligned buffer (the upload mappings of `body.py`), with no copy into the page cache
and no writeback afterwards. On the benchmark machine that took the CPU of writing a 45 MB
update from about 20 ms to under 1 ms (docs/benchmarks.md). Buffers that are not
page-aligned, small bodies and filesystems that refuse ``O_DIRECT`` (tmpfs on older
kernels, non-Linux systems) get an ordinary buffered write. Either way the file is fsynced
before it is renamed into place, so it is whole or absent.

Each body carries a CRC-32 (``zlib.crc32``, the checksum of zip and gzip), which the store
computes on another thread while the body is written: it detects a damaged file at recovery, which
is all the journal needs (it is deleted a round later; whoever can write the state dir can
rewrite its database too, so a cryptographic digest would protect nothing more). Rows
written by earlier versions carry a sha256, which `matches` still verifies.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["ALIGNMENT", "checksum", "matches", "write_file"]

ALIGNMENT = 4096  # O_DIRECT: buffer address and write length in multiples of this
_DIRECT_FROM = 1 << 20  # smaller bodies are written through the page cache
_CRC32 = "crc32:"
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the system has no direct I/O


def checksum(body: bytes | bytearray | memoryview) -> str:
    """Return the CRC-32 of `body` in the form the journal records (zlib releases the GIL)."""
    return f"{_CRC32}{zlib.crc32(body):08x}"


def matches(body: bytes, recorded: str) -> bool:
    """Tell whether `body` has the checksum `recorded` (a CRC-32, or an older sha256)."""
    if recorded.startswith(_CRC32):
        return checksum(body) == recorded
    return hashlib.sha256(body).hexdigest() == recorded


def write_file(path: Path, body: bytes | bytearray | memoryview) -> None:
    """Create `path` (which must not exist), write `body` and fsync it; direct I/O if possible."""
    view = memoryview(body).cast("B")
    direct = _O_DIRECT and view.nbytes >= _DIRECT_FROM and _address(view) % ALIGNMENT == 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = _open_direct(path, flags) if direct else None
    if fd is None:
        fd = os.open(path, flags, 0o644)
    try:
        done = 0
        if direct:
            done = _write_aligned(fd, view)
        _write_all(fd, view, done)
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_direct(path: Path, flags: int) -> int | None:
    """Open `path` for direct I/O, or return None if this filesystem does not offer it."""
    try:
        return os.open(path, flags | _O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return None


def _write_aligned(fd: int, view: memoryview) -> int:
    """Write the longest aligned prefix of `view` with O_DIRECT; return how much was written.

    Then switch the descriptor back to buffered I/O for the unaligned tail. A device that
    wants a larger alignment refuses the write (EINVAL): the rest then goes buffered too.
    """
    aligned = view.nbytes - view.nbytes % ALIGNMENT
    done = 0
    try:
        while done < aligned:
            done += os.write(fd, view[done:aligned])
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
    return done


def _write_all(fd: int, view: memoryview, start: int) -> None:
    while start < view.nbytes:
        start += os.write(fd, view[start:])


def _address(view: memoryview) -> int:
    """Return the memory address of the first byte of `view`."""
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)
