"""Durable files of the state dir: atomic replacement, fsyncs, npz tensors, sha256.

`write_atomic` writes through a temp file in the same directory: flush + fsync,
``os.replace``, then an fsync of the directory, so a crash leaves the old file or the new
one, never half of one. Tensors go to ``.npz`` without pickle and come back with
``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = [
    "atomic_path",
    "fsync_dir",
    "move_into_place",
    "read_npz",
    "sha256_file",
    "write_atomic",
    "write_npz",
]


def write_npz(file: BinaryIO, weights: Mapping[str, np.ndarray]) -> None:
    """Write `weights` as an .npz archive, entries in the mapping's order, without pickle."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in weights.items():
            array = np.asarray(value, order="C")  # keeps 0-d arrays 0-d
            if array.dtype.hasobject:
                raise ValueError(f"tensor {name!r} has dtype object, which needs pickle")
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                # The array's own memory goes to the file: no temporary copy of it.
                header = np.lib.format.header_data_from_array_1_0(array)
                np.lib.format.write_array_header_2_0(entry, header)
                entry.write(array.reshape(-1).view(np.uint8).data)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    # Never allow pickle: a tampered file must not run code.
    with np.load(path, allow_pickle=False) as archive:
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
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; once it is written, rename it to `path`, fsync the dir."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temp
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    move_into_place(temp, path)


def move_into_place(temp: Path, path: Path) -> None:
    """Rename the written, fsynced `temp` to `path` and fsync `path`'s directory.

    `temp` is gone afterwards, also if the rename fails.
    """
    try:
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
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


def sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return _sha256_of(file)


def _sha256_of(file: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
