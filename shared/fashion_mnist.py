"""Fashion-MNIST from a system-wide copy (Debian's `dataset-fashion-mnist`), cached as uint8.

The Debian package installs the four gzipped IDX files under
/usr/share/datasets/fashion-mnist (MIT licence). They are recompressed, so their md5 is
not the one torchvision checks: they are read here with `shared.idx` instead. The parsed
arrays (47 MB of uint8) go to `<data_dir>/cache/fashion-mnist.npz` on the first load, so
the workers of a federation do not each gunzip and parse the files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from shared.errors import DatasetError
from shared.idx import read_idx_images, read_idx_labels
from shared.npz_cache import read_npz, write_npz

__all__ = [
    "CACHE_NAME",
    "DEBIAN_DIR",
    "DIR_ENV",
    "FILES",
    "fashion_mnist_arrays",
    "system_dir",
]

_log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "TRIBUTARY_FASHION_MNIST_DIR"  # a folder laid out as DEBIAN_DIR, searched instead
CACHE_NAME = "cache/fashion-mnist.npz"  # relative to data_dir
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_SOURCE = "source"  # the cache's record of the files it was parsed from: sizes and mtimes


def system_dir() -> Path | None:
    """Return the folder holding all four files ($TRIBUTARY_FASHION_MNIST_DIR or Debian's)."""
    folder = Path(os.environ.get(DIR_ENV) or DEBIAN_DIR)
    return folder if all((folder / name).is_file() for name in FILES.values()) else None


def fashion_mnist_arrays(folder: Path, cache_dir: Path | None) -> dict[str, np.ndarray]:
    """Return train/test images (N, 28, 28) uint8 and labels (N,) int64 read from `folder`."""
    source = _fingerprint(folder)
    cache = None if cache_dir is None else Path(cache_dir) / CACHE_NAME
    if cache is not None:
        cached = read_npz(cache, (*FILES, _SOURCE))
        if cached is not None and _valid(cached, source):
            del cached[_SOURCE]
            return cached
    arrays = _parse(folder)
    if cache is not None:
        write_npz(cache, {**arrays, _SOURCE: source})
    return arrays


def _parse(folder: Path) -> dict[str, np.ndarray]:
    arrays = {
        key: (read_idx_images if key.endswith("images") else read_idx_labels)(folder / name)
        for key, name in FILES.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DatasetError(
                f"{folder}: {split} split has {len(images)} images but {len(labels)} labels"
            )
    return arrays


def _fingerprint(folder: Path) -> np.ndarray:
    """Return each file's size and mtime: a cache parsed from other files is not used."""
    stats = [(folder / name).stat() for name in FILES.values()]
    return np.array([[s.st_size, s.st_mtime_ns] for s in stats], dtype=np.int64)


def _valid(cached: dict[str, np.ndarray], source: np.ndarray) -> bool:
    """Tell whether the cached arrays come from `source` and have the expected form."""
    ok = np.array_equal(cached[_SOURCE], source)
    for split in ("train", "test"):
        images, labels = cached[f"{split}_images"], cached[f"{split}_labels"]
        ok = ok and (
            images.dtype == np.uint8
            and images.ndim == 3
            and labels.dtype == np.int64
            and labels.shape == (len(images),)
            and bool(np.all((labels >= 0) & (labels <= 9)))
        )
    if not ok:
        _log.warning("ignoring the Fashion-MNIST cache: other files, shapes or labels")
    return ok
