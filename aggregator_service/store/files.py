"""Durable files of the state dir: atomic replacement, fsyncs, whole reads, sha256.

`write_atomic` writes through a temp file in the same directory: flush + fsync,
``os.replace``, then an fsync of the directory, so a crash leaves the old file or the new
one, never half of one. ``.npz`` tensors (the checkpoints of older state dirs) are read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = [
    "atomic_path",
    "fsync_dir",
    "move_into_place",
    "read_npz",
    "read_whole",
    "write_atomic",
]


def read_npz(source: Path | BinaryIO) -> dict[str, np.ndarray]:
    """Load an .npz archive of plain arrays, refusing anything that would need pickle."""
    # Never allow pickle: a tampered file must not run code.
    with np.load(source, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def write_atomic(path: Path, write: Callable[[BinaryIO], object], hashing: futures.Executor) -> str:
    """Write a file through a temp file in its directory, fsync, rename, fsync the dir.

    Return the sha256 of the file, read back on `hashing` while it is fsynced.
    """
    digest: futures.Future[str] | None = None
    try:
        with atomic_path(path) as temp, open(temp, "wb") as file:
            write(file)
            file.flush()
            digest = hashing.submit(_sha256_and_close, open(temp, "rb"))  # noqa: SIM115
            os.fsync(file.fileno())
    finally:
        if digest is not None:
            futures.wait([digest])
    return digest.result()


@contextlib.contextmanager
def atomic_path(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path`; once it is written, rename it to `path`, fsync the dir.

    Not `durable`: no fsync of the directory.
    """
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temp
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    move_into_place(temp, path, durable=durable)


def move_into_place(temp: Path, path: Path, *, durable: bool = True) -> None:
    """Rename the written `temp` to `path` and, if `durable`, fsync `path`'s directory.

    `temp` is gone afterwards, also if the rename fails.
    """
    try:
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_and_close(file: BinaryIO) -> str:
    with file:
        return _sha256_of(file)


def read_whole(path: Path) -> bytearray:
    """Return the whole file in one writable buffer, read in place (no second copy)."""
    with open(path, "rb") as file:
        data = bytearray(os.fstat(file.fileno()).st_size)
        view = memoryview(data)
        filled = 0
        while filled < len(data):
            count = file.readinto(view[filled:])
            if not count:
                raise EOFError(f"{path} ended after {filled} of {len(data)} bytes")
            filled += count
        return data


def map_whole(path: Path) -> memoryview:
    """Return a read-only memory map of the whole file (empty files: an empty view)."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))


def _sha256_of(file: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
