"""Read IDX files (the MNIST family's format), gzipped or not, with every header checked.

An IDX file is a big-endian header, then the data: two zero bytes, a type code (0x08 for
unsigned bytes, the only one read here), the number of dimensions, one uint32 per
dimension, then the product of the dimensions in bytes. http://yann.lecun.com/exdb/mnist/
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np

from shared.errors import DatasetError

__all__ = ["MAX_BYTES", "UBYTE", "read_idx", "read_idx_images", "read_idx_labels"]

UBYTE = 0x08  # the type code of unsigned bytes
_GZIP_MAGIC = b"\x1f\x8b"
MAX_BYTES = 1 << 32  # a header asking for more is taken as damaged, not allocated


def read_idx(path: Path, *, ndim: int | None = None) -> np.ndarray:
    """Return the uint8 array an IDX file holds; `ndim`, if given, must match its header."""
    try:
        with _open(Path(path)) as file:
            return _read(file, path, ndim)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"could not read {path}: {exc}") from exc


def read_idx_images(path: Path) -> np.ndarray:
    """Return (N, H, W) uint8 images from an idx3 file."""
    return read_idx(path, ndim=3)


def read_idx_labels(path: Path, *, num_classes: int = 10) -> np.ndarray:
    """Return (N,) int64 labels from an idx1 file, each checked to be below `num_classes`."""
    labels = read_idx(path, ndim=1)
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetError(f"{path}: label {int(labels.max())} is not below {num_classes}")
    return labels.astype(np.int64)


def _open(path: Path) -> io.BufferedIOBase:
    """Open the file, through gzip if it starts with the gzip magic."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read(file: io.BufferedIOBase, path: Path, ndim: int | None) -> np.ndarray:
    """Check the header, then read the data straight into the array it fills."""
    magic = file.read(4)
    if len(magic) < 4:
        raise DatasetError(f"{path}: {len(magic)} bytes, too short for an IDX header")
    zeros, type_code, dims = struct.unpack(">HBB", magic)
    if zeros != 0 or type_code != UBYTE:
        raise DatasetError(
            f"{path}: bad IDX magic 0x{magic.hex()}: expected 0x0000{UBYTE:02x}<ndim> "
            "(unsigned bytes)"
        )
    if ndim is not None and dims != ndim:
        raise DatasetError(f"{path}: IDX file of {dims} dimensions; expected {ndim}")
    raw_shape = file.read(4 * dims)
    if len(raw_shape) < 4 * dims:
        raise DatasetError(
            f"{path}: truncated IDX header ({4 + len(raw_shape)} of {4 + 4 * dims} bytes)"
        )
    shape = struct.unpack(f">{dims}I", raw_shape)
    size = int(np.prod(shape, dtype=np.int64))
    if size > MAX_BYTES:
        raise DatasetError(f"{path}: IDX header asks for {size} bytes, over {MAX_BYTES}")
    data = np.empty(size, dtype=np.uint8)
    got = _read_into(file, data.data)  # readinto fills the array itself: no copy
    if got == size:  # then there must be nothing after the data
        got += sum(len(chunk) for chunk in iter(lambda: file.read(1 << 20), b""))
    if got != size:
        raise DatasetError(
            f"{path}: IDX header says {'x'.join(map(str, shape))} = {size} bytes of data, "
            f"the file holds {got}"
        )
    return data.reshape(shape)


def _read_into(file: io.BufferedIOBase, buffer: memoryview) -> int:
    """Fill `buffer` from `file` as far as it goes; return the bytes read."""
    done = 0
    while done < len(buffer):
        count = file.readinto(buffer[done:])
        if not count:
            break
        done += count
    return done
