"""Read IDX files (the MNIST family's format), gzipped or not, with every header checked.

An IDX file is a big-endian header, then the data: two zero bytes, a type code (0x08 for
unsigned bytes, the only one read here), the number of dimensions, one uint32 per
dimension, then the product of the dimensions in bytes. http://yann.lecun.com/exdb/mnist/
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from shared.errors import DatasetError

__all__ = ["UBYTE", "read_idx", "read_idx_images", "read_idx_labels"]

UBYTE = 0x08  # the type code of unsigned bytes
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path, *, ndim: int | None = None) -> np.ndarray:
    """Return the uint8 array an IDX file holds; `ndim`, if given, must match its header."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zeros, type_code, dims = struct.unpack(">HBB", raw[:4])
    if zeros != 0 or type_code != UBYTE:
        raise DatasetError(
            f"{path}: bad IDX magic 0x{raw[:4].hex()}: expected 0x0000{UBYTE:02x}<ndim> "
            "(unsigned bytes)"
        )
    if ndim is not None and dims != ndim:
        raise DatasetError(f"{path}: IDX file of {dims} dimensions; expected {ndim}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != size:
        raise DatasetError(
            f"{path}: IDX header says {'x'.join(map(str, shape))} = {size} bytes of data, "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx_images(path: Path) -> np.ndarray:
    """Return (N, H, W) uint8 images from an idx3 file."""
    return read_idx(path, ndim=3)


def read_idx_labels(path: Path, *, num_classes: int = 10) -> np.ndarray:
    """Return (N,) int64 labels from an idx1 file, each checked to be below `num_classes`."""
    labels = read_idx(path, ndim=1)
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetError(f"{path}: label {int(labels.max())} is not below {num_classes}")
    return labels.astype(np.int64)


def _read_bytes(path: Path) -> bytes:
    """Return the file's bytes, gunzipped if it starts with the gzip magic."""
    try:
        raw = Path(path).read_bytes()
        return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"could not read {path}: {exc}") from exc
