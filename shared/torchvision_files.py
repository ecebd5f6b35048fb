"""MNIST, Fashion-MNIST and CIFAR-10 read from torchvision's files under a data_dir.

The files are downloaded only when asked; torchvision is imported inside the loader, never
at import. The images are kept as uint8 with their normalization constants.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DatasetError
from shared.splits import Dataset, Normalization, Split

__all__ = ["TORCHVISION", "TorchvisionSpec", "load_torchvision"]


@dataclass(frozen=True)
class TorchvisionSpec:
    """Where torchvision keeps one dataset's files, and its normalization constants."""

    class_name: str  # the class in torchvision.datasets
    folder: str  # relative to data_dir
    files: tuple[str, ...]
    normalization: Normalization


_MNIST_FILES = tuple(
    f"{split}-{kind}-idx{dim}-ubyte"
    for split in ("train", "t10k")
    for kind, dim in (("images", 3), ("labels", 1))
)
_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
# What torchvision raises for missing, corrupt or undownloadable files.
_READ_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    pickle.UnpicklingError,
)
TORCHVISION: dict[str, TorchvisionSpec] = {
    "mnist": TorchvisionSpec(
        "MNIST", "MNIST/raw", _MNIST_FILES, Normalization((0.1307,), (0.3081,))
    ),
    "fashion-mnist": TorchvisionSpec(
        "FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, Normalization((0.2860,), (0.3530,))
    ),
    "cifar10": TorchvisionSpec(
        "CIFAR10",
        "cifar-10-batches-py",
        _CIFAR_FILES,
        Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ),
}


def load_torchvision(
    name: str, *, data_dir: Path, download: bool = False, verify_checksums: bool = True
) -> Dataset:
    """Read a torchvision dataset's raw files; `verify_checksums=False` skips CIFAR's md5."""
    if name not in TORCHVISION:
        raise DatasetError(f"{name!r} is not a torchvision dataset: {', '.join(TORCHVISION)}")
    spec = TORCHVISION[name]
    folder = Path(data_dir) / spec.folder
    if not download:
        _require_files(spec, folder)
    dataset_cls = _torchvision_class(spec, verify_checksums=verify_checksums)
    try:
        train_set = dataset_cls(root=str(data_dir), train=True, download=download)
        test_set = dataset_cls(root=str(data_dir), train=False, download=False)
    except _READ_ERRORS as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        action = "download" if download else "read"
        raise DatasetError(
            f"could not {action} {name} in {folder}: {first_line}. {_how_to_get(spec, folder)}"
        ) from exc
    train, test = _torchvision_split(train_set, spec), _torchvision_split(test_set, spec)
    return Dataset(
        name=name,
        train=train,
        test=test,
        num_classes=len(train_set.classes),
        in_channels=len(spec.normalization.mean),
        image_size=train.pixels.shape[-1],
        class_names=tuple(str(c) for c in train_set.classes),
    )


def _torchvision_class(spec: TorchvisionSpec, *, verify_checksums: bool) -> Any:
    import torchvision.datasets

    base = getattr(torchvision.datasets, spec.class_name)
    if verify_checksums or spec.class_name != "CIFAR10":
        return base  # MNIST and FashionMNIST only check that the raw files exist
    # Same format, presence check only: torchvision's check_integrity skips md5 when None.
    return type(
        "PresenceCheckedCIFAR10",
        (base,),
        {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def _torchvision_split(source: Any, spec: TorchvisionSpec) -> Split:
    data = np.asarray(source.data)  # MNIST: (N, H, W) uint8; CIFAR10: (N, H, W, C) uint8
    images = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
    labels = np.asarray(source.targets, dtype=np.int64)
    pixels = np.ascontiguousarray(images, dtype=np.uint8)
    return Split(pixels, labels, spec.normalization)


def _require_files(spec: TorchvisionSpec, folder: Path) -> None:
    missing = [name for name in spec.files if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{spec.class_name} files not found in {folder} (missing: {', '.join(missing)}). "
            f"{_how_to_get(spec, folder)}"
        )


def _how_to_get(spec: TorchvisionSpec, folder: Path) -> str:
    return (
        "To fetch them, pass --download (download: true in the config, or "
        "TRIBUTARY_DOWNLOAD=true) on a machine with internet access, or copy the "
        f"uncompressed files {', '.join(spec.files)} into {folder}"
    )
