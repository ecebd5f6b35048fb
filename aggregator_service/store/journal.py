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

Each body carries a checksum, `Sum64`, computed on another thread while the body is
written. A file only gets its row once it is fsynced, so a crash cannot tear a file that
recovery reads; the checksum is there for damage after that (a lost or garbled sector, a
truncated file), which is all the journal needs: the file is deleted a round later, and
whoever can write the state dir can rewrite its database too, so a cryptographic digest
would protect nothing more. `Sum64` is the body's length and two sums modulo 2**64 over
its 4 KiB sectors (each sector's sum of 64-bit words, plainly and weighted by the sector's
position): any change within one sector that alters its word sum, a sector of zeros
where data was, two sectors swapped, or a cut body changes it. numpy computes it in about
3 ms per 45 MB update on the benchmark machine against 15-20 ms for zlib's CRC-32 or
Adler-32 (docs/benchmarks.md). Rows of earlier versions carry a CRC-32 or a sha256, which
`matches` still verifies.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "ALIGNMENT",
    "DIRECT_FROM",
    "NEW_FILE",
    "O_DIRECT",
    "Sum64",
    "address",
    "checksum",
    "end_direct",
    "matches",
    "open_direct",
    "write_file",
]

ALIGNMENT = 4096  # O_DIRECT: buffer address and write length in multiples of this
DIRECT_FROM = 1 << 20  # smaller bodies are written through the page cache
O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the system has no direct I/O
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)  # open flags
SECTOR = 4096  # the unit of Sum64
_SUM64 = "sum64:"
_CRC32 = "crc32:"
_MASK = (1 << 64) - 1


class Sum64:
    """The journal's running checksum of a body, fed in order (see the module docstring)."""

    def __init__(self) -> None:
        self.length = 0
        self._plain = 0  # sum of the sector sums
        self._weighted = 0  # sum of (sector number from 1) x sector sum

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next stretch of the body; only the last may end inside a sector."""
        if self.length % SECTOR:
            raise ValueError("Sum64: a stretch ended inside a sector before this one")
        view = memoryview(data).cast("B")
        whole = view.nbytes - view.nbytes % SECTOR
        if whole:
            words = np.frombuffer(view, dtype="<u8", count=whole // 8)
            self._add(np.add.reduce(words.reshape(-1, SECTOR // 8), axis=1))
        if whole < view.nbytes:  # the last, partial sector, as if padded with zeros
            tail = bytes(view[whole:]) + bytes(-(view.nbytes - whole) % 8)
            self._add(np.add.reduce(np.frombuffer(tail, dtype="<u8")).reshape(1), whole)
        self.length += view.nbytes

    def _add(self, sector_sums: np.ndarray, offset: int = 0) -> None:
        first = (self.length + offset) // SECTOR + 1
        numbers = np.arange(first, first + sector_sums.size, dtype=np.uint64)
        self._plain = (self._plain + int(np.add.reduce(sector_sums))) & _MASK
        self._weighted = (self._weighted + int(np.dot(sector_sums, numbers))) & _MASK

    def text(self) -> str:
        """Return the checksum in the form the journal records."""
        return f"{_SUM64}{self.length}:{self._plain:016x}{self._weighted:016x}"


def checksum(body: bytes | bytearray | memoryview) -> str:
    """Return the journal's checksum of `body` (numpy releases the GIL while it sums)."""
    total = Sum64()
    total.update(body)
    return total.text()


def matches(body: bytes | bytearray | memoryview, recorded: str) -> bool:
    """Tell whether `body` has the checksum `recorded` (Sum64, or an older CRC-32 or sha256)."""
    if recorded.startswith(_SUM64):
        return checksum(body) == recorded
    if recorded.startswith(_CRC32):
        return f"{_CRC32}{zlib.crc32(body):08x}" == recorded
    return hashlib.sha256(body).hexdigest() == recorded


def write_file(path: Path, body: bytes | bytearray | memoryview, *, durable: bool = True) -> None:
    """Create `path` (which must not exist), write `body`, fsync it if `durable`.

    Direct I/O where possible, durable or not: the body then skips the page cache.
    """
    view = memoryview(body).cast("B")
    direct = O_DIRECT and view.nbytes >= DIRECT_FROM and address(view) % ALIGNMENT == 0
    fd = open_direct(path, NEW_FILE) if direct else None
    if fd is None:
        fd = os.open(path, NEW_FILE, 0o644)
    try:
        done = 0
        if direct:
            done = _write_aligned(fd, view)
        _write_all(fd, view, done)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def open_direct(path: Path, flags: int) -> int | None:
    """Open `path` for direct I/O, or return None if this filesystem does not offer it."""
    try:
        return os.open(path, flags | O_DIRECT, 0o644)
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
    end_direct(fd)
    return done


def end_direct(fd: int) -> None:
    """Switch `fd` from direct to buffered I/O (for a write of an unaligned tail)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)


def _write_all(fd: int, view: memoryview, start: int) -> None:
    while start < view.nbytes:
        start += os.write(fd, view[start:])


def address(view: memoryview) -> int:
    """Return the memory address of the first byte of `view`."""
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)
