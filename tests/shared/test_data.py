"""Tests for shared/data.py: offline datasets, torchvision file formats, splits."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

from shared.config import ExperimentConfig, SyntheticConfig
from shared.data import (
    Dataset,
    Split,
    dataset_from_config,
    describe,
    load_dataset,
    load_torchvision,
    stratified_split,
)
from shared.errors import ConfigError, DatasetError
from shared.fashion_mnist import DIR_ENV
from tests.shared.fake_datasets import (
    CIFAR_LABEL_NAMES,
    fake_images,
    write_cifar10,
    write_mnist,
)


@pytest.fixture(autouse=True)
def no_system_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide an installed Debian Fashion-MNIST: these tests read torchvision's layout."""
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "no-system-copy"))


MNIST_ZERO = -0.1307 / 0.3081  # a black pixel: (0 - mean) / std = -0.42421...
MNIST_FULL = (1 - 0.1307) / 0.3081  # a white pixel: 0.8693 / 0.3081 = 2.82149...


def _expected(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalize (N, C, H, W) uint8 pixels in float64, channel by channel."""
    out = pixels.astype(np.float64) / 255.0
    for channel, (m, s) in enumerate(zip(mean, std, strict=True)):
        out[:, channel] = (out[:, channel] - m) / s
    return out


def _write_fake_mnist(root: Path, folder: str) -> tuple[np.ndarray, np.ndarray]:
    train_labels, test_labels = np.array([3, 1, 4, 1, 5, 9]), np.array([2, 6, 5])
    write_mnist(
        root,
        folder=folder,
        train=(fake_images(6, (28, 28)), train_labels),
        test=(fake_images(3, (28, 28), offset=100), test_labels),
    )
    return train_labels, test_labels


@pytest.mark.parametrize(
    ("name", "folder", "mean", "std", "first_class"),
    [
        ("mnist", "MNIST", 0.1307, 0.3081, "0 - zero"),
        ("fashion-mnist", "FashionMNIST", 0.2860, 0.3530, "T-shirt/top"),
    ],
)
def test_mnist_formats_load_normalized(
    tmp_path: Path, name: str, folder: str, mean: float, std: float, first_class: str
) -> None:
    train_labels, test_labels = _write_fake_mnist(tmp_path, folder)
    dataset = load_dataset(name, data_dir=tmp_path)  # type: ignore[arg-type]
    assert dataset.train.images.shape == (6, 1, 28, 28)
    assert dataset.test.images.shape == (3, 1, 28, 28)
    assert dataset.train.images.dtype == np.float32
    assert dataset.train.pixels.dtype == np.uint8  # held as stored, normalized on demand
    assert dataset.train.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.train.labels, train_labels)
    np.testing.assert_array_equal(dataset.test.labels, test_labels)
    pixels = fake_images(3, (1, 28, 28), offset=100)
    np.testing.assert_allclose(dataset.test.images, _expected(pixels, (mean,), (std,)), atol=1e-5)
    assert (dataset.num_classes, dataset.in_channels, dataset.image_size) == (10, 1, 28)
    assert dataset.class_names[0] == first_class
    assert len(dataset.class_names) == 10


def test_mnist_known_pixels_map_to_known_values(tmp_path: Path) -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[1] = 255
    write_mnist(tmp_path, train=(images, np.array([0, 1])), test=(images, np.array([7, 8])))
    dataset = load_dataset("mnist", data_dir=tmp_path)
    assert dataset.train.images[0, 0, 5, 5] == pytest.approx(-0.42421, abs=1e-4)
    assert dataset.train.images[1, 0, 27, 0] == pytest.approx(2.82149, abs=1e-4)
    assert np.all(dataset.test.images[0] == dataset.test.images[0, 0, 0, 0])


def _write_fake_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    train_images, test_images = fake_images(10, (3, 32, 32)), fake_images(4, (3, 32, 32), offset=7)
    write_cifar10(
        root, train=(train_images, np.arange(10) % 5), test=(test_images, np.array([4, 3, 2, 1]))
    )
    return train_images, test_images


def test_cifar10_format_loads_channels_first(tmp_path: Path) -> None:
    train_images, test_images = _write_fake_cifar(tmp_path)
    dataset = load_torchvision("cifar10", data_dir=tmp_path, verify_checksums=False)
    assert dataset.train.images.shape == (10, 3, 32, 32)
    assert dataset.test.images.shape == (4, 3, 32, 32)
    assert dataset.train.images.dtype == np.float32
    assert dataset.test.images.flags.c_contiguous
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    np.testing.assert_allclose(dataset.train.images, _expected(train_images, mean, std), atol=1e-5)
    np.testing.assert_allclose(dataset.test.images, _expected(test_images, mean, std), atol=1e-5)
    np.testing.assert_array_equal(dataset.train.labels, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(dataset.test.labels, [4, 3, 2, 1])
    assert dataset.class_names == tuple(CIFAR_LABEL_NAMES)
    assert (dataset.num_classes, dataset.in_channels, dataset.image_size) == (5, 3, 32)


def test_cifar10_checks_md5_by_default(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path)
    with pytest.raises(DatasetError, match=r"could not read cifar10 .*--download"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("name", "folder", "missing_file"),
    [
        ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
        ("fashion-mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ],
)
def test_missing_files_say_where_and_what_to_run(
    tmp_path: Path, name: str, folder: str, missing_file: str
) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(name, data_dir=tmp_path)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(tmp_path / folder) in message
    assert missing_file in message
    assert "--download" in message


def test_partly_missing_mnist_names_only_the_missing_files(tmp_path: Path) -> None:
    raw = write_mnist(
        tmp_path,
        train=(fake_images(2, (28, 28)), np.array([0, 1])),
        test=(fake_images(2, (28, 28)), np.array([0, 1])),
    )
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"missing: t10k-labels-idx1-ubyte\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_failed_download_is_a_dataset_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(self: object) -> None:
        raise URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(DatasetError, match=r"could not download mnist .*no route to host"):
        load_dataset("mnist", data_dir=tmp_path, download=True)


def test_unknown_dataset_is_rejected() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k", seed=0)


def test_mnist5k_shapes_and_ranges(mnist5k: Dataset) -> None:
    assert mnist5k.train.images.shape == (4000, 1, 28, 28)
    assert mnist5k.test.images.shape == (1000, 1, 28, 28)
    assert mnist5k.train.images.dtype == np.float32
    assert mnist5k.train.pixels.dtype == np.uint8
    assert mnist5k.train.labels.dtype == np.int64
    # Stratified: the 500 digits of each class split 400 / 100.
    np.testing.assert_array_equal(np.bincount(mnist5k.train.labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(mnist5k.test.labels), [100] * 10)
    assert mnist5k.train.images.min() == pytest.approx(MNIST_ZERO, abs=1e-5)
    assert mnist5k.train.images.max() == pytest.approx(MNIST_FULL, abs=1e-5)
    assert (mnist5k.num_classes, mnist5k.in_channels, mnist5k.image_size) == (10, 1, 28)


def test_mnist5k_same_seed_same_split(mnist5k: Dataset) -> None:
    again = load_dataset("mnist5k", seed=0)
    np.testing.assert_array_equal(again.train.images, mnist5k.train.images)
    np.testing.assert_array_equal(again.test.labels, mnist5k.test.labels)


def test_stratified_split_is_a_disjoint_seeded_cover() -> None:
    labels = np.repeat(np.arange(10), 500)
    train, test = stratified_split(labels, test_size=1000, seed=0)
    assert (len(train), len(test)) == (4000, 1000)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(5000))
    again_train, again_test = stratified_split(labels, test_size=1000, seed=0)
    np.testing.assert_array_equal(again_train, train)
    np.testing.assert_array_equal(again_test, test)
    _, other_test = stratified_split(labels, test_size=1000, seed=1)
    assert not np.array_equal(other_test, test)


def test_stratified_split_gives_remainders_to_largest_fractions() -> None:
    # Shares of 3 test examples: class 0 6*3/10 = 1.8, class 1 0.9, class 2 0.3
    # -> floors 1, 0, 0; the two left over go to fractions .9 and .8 -> 2, 1, 0.
    labels = np.array([0] * 6 + [1] * 3 + [2])
    _, test = stratified_split(labels, test_size=3, seed=5)
    np.testing.assert_array_equal(np.bincount(labels[test], minlength=3), [2, 1, 0])


def test_stratified_split_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="test_size 10"):
        stratified_split(np.zeros(10, dtype=np.int64), test_size=10, seed=0)


def test_synthetic_defaults_are_deterministic_and_balanced() -> None:
    first, second = load_dataset("synthetic", seed=7), load_dataset("synthetic", seed=7)
    assert first.train.images.shape == (2000, 3, 32, 32)
    assert first.test.images.shape == (500, 3, 32, 32)
    assert first.train.images.dtype == np.float32
    assert first.train.labels.dtype == np.int64
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)
    np.testing.assert_array_equal(np.bincount(first.train.labels), [200] * 10)
    np.testing.assert_array_equal(np.bincount(first.test.labels), [50] * 10)
    other = load_dataset("synthetic", seed=8)
    assert not np.array_equal(other.train.images, first.train.images)


def test_synthetic_follows_its_config() -> None:
    config = SyntheticConfig(channels=1, image_size=8, num_classes=4, train_size=10, test_size=6)
    dataset = load_dataset("synthetic", synthetic=config)
    assert dataset.train.images.shape == (10, 1, 8, 8)
    assert dataset.test.images.shape == (6, 1, 8, 8)
    assert (dataset.num_classes, dataset.in_channels, dataset.image_size) == (4, 1, 8)
    assert len(dataset.class_names) == 4
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), [3, 3, 2, 2])


def test_synthetic_is_learnable_by_nearest_class_mean() -> None:
    dataset = load_dataset("synthetic", seed=1)
    train_x = dataset.train.images.reshape(len(dataset.train), -1).astype(np.float64)
    test_x = dataset.test.images.reshape(len(dataset.test), -1).astype(np.float64)
    means = np.stack([train_x[dataset.train.labels == k].mean(axis=0) for k in range(10)])
    distances = ((test_x[:, None, :] - means[None]) ** 2).sum(axis=2)  # (N, classes)
    accuracy = np.mean(distances.argmin(axis=1) == dataset.test.labels)
    assert accuracy > 0.9


def test_dataset_from_config_passes_seed_and_synthetic_shape() -> None:
    synthetic = SyntheticConfig(channels=2, image_size=6, train_size=30, test_size=10)
    config = ExperimentConfig(dataset="synthetic", seed=3, synthetic=synthetic)
    loaded = dataset_from_config(config)
    direct = load_dataset("synthetic", seed=3, synthetic=synthetic)
    assert loaded.train.images.shape == (30, 2, 6, 6)
    np.testing.assert_array_equal(loaded.train.images, direct.train.images)


def test_negative_seed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        load_dataset("synthetic", seed=-1)


def test_split_subset_and_len() -> None:
    images = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 1, 2, 2)
    split = Split(images, np.array([5, 6, 7, 8], dtype=np.int64))
    part = split.subset(np.array([3, 1]))
    assert len(split) == 4
    assert len(part) == 2
    np.testing.assert_array_equal(part.labels, [8, 6])
    np.testing.assert_array_equal(part.images[0], images[3])


def test_split_rejects_mismatched_lengths() -> None:
    with pytest.raises(DatasetError, match=r"\(3, 1, 2, 2\).*\(2,\)"):
        Split(np.zeros((3, 1, 2, 2), np.float32), np.zeros(2, np.int64))


def test_describe_is_one_line() -> None:
    config = SyntheticConfig(channels=1, image_size=4, num_classes=2, train_size=8, test_size=4)
    line = describe(load_dataset("synthetic", synthetic=config))
    assert "\n" not in line
    assert line.startswith("synthetic:")
    assert "(8, 1, 4, 4)" in line
    assert "(4, 1, 4, 4)" in line
    assert "2 classes" in line
