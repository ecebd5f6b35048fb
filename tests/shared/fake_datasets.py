"""Write tiny datasets in torchvision's own on-disk formats, for loader tests without downloads.

MNIST and FashionMNIST: uncompressed idx files in ``<root>/<Class>/raw``: a big-endian
header (magic 2051 = 0x0803 for uint8 3-d images, 2049 = 0x0801 for uint8 1-d labels,
then one uint32 per dimension) followed by the raw bytes.

CIFAR-10: pickled dicts in ``<root>/cifar-10-batches-py``: ``data_batch_1..5`` and
``test_batch`` hold "data" (N, 3072) uint8 rows (1024 red, then green, then blue values,
row-major) and "labels"; ``batches.meta`` holds "label_names". The real files are Python 2
pickles whose byte-string keys torchvision reads back as str (``encoding="latin1"``), so
str keys here give what torchvision sees.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR_LABEL_NAMES",
    "fake_images",
    "write_cifar10",
    "write_idx_images",
    "write_idx_labels",
    "write_mnist",
]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer"]
CIFAR_FOLDER = "cifar-10-batches-py"


def fake_images(num_images: int, shape: tuple[int, ...], *, offset: int = 0) -> np.ndarray:
    """Return uint8 images whose pixels count up (mod 256) from `offset`."""
    size = num_images * int(np.prod(shape))
    return ((np.arange(size) + offset) % 256).astype(np.uint8).reshape(num_images, *shape)


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """Write (N, H, W) uint8 images as an idx3 file."""
    num, height, width = images.shape
    header = struct.pack(">IIII", IDX_IMAGES_MAGIC, num, height, width)
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """Write (N,) uint8 labels as an idx1 file."""
    path.write_bytes(
        struct.pack(">II", IDX_LABELS_MAGIC, len(labels)) + labels.astype(np.uint8).tobytes()
    )


def write_mnist(
    root: Path,
    *,
    folder: str = "MNIST",
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> Path:
    """Write (images, labels) pairs as `<root>/<folder>/raw/{train,t10k}-*`; return raw dir."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def write_cifar10(
    root: Path,
    *,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    label_names: list[str] = CIFAR_LABEL_NAMES,
) -> Path:
    """Write (N, 3, 32, 32) uint8 images and labels as CIFAR-10 batches; return the folder."""
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = train
    batches = zip(np.array_split(train_images, 5), np.array_split(train_labels, 5), strict=True)
    for number, (images, labels) in enumerate(batches, start=1):
        _write_batch(folder / f"data_batch_{number}", images, labels, f"training batch {number}")
    _write_batch(folder / "test_batch", *test, "testing batch 1")
    meta = {"label_names": label_names, "num_cases_per_batch": len(test[1]), "num_vis": 3072}
    _pickle(folder / "batches.meta", meta)
    return folder


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    entry = {
        "batch_label": name,
        "labels": [int(label) for label in labels],
        "data": images.astype(np.uint8).reshape(len(images), 3 * 32 * 32),
        "filenames": [f"image_{i}.png" for i in range(len(images))],
    }
    _pickle(path, entry)


def _pickle(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)
