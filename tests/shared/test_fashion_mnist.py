"""Tests for Fashion-MNIST from Debian's layout (shared/fashion_mnist.py) and its cache."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

import shared.fashion_mnist as fashion_mnist
from shared.data import FASHION_CLASSES, load_dataset
from shared.errors import DatasetError
from shared.fashion_mnist import CACHE_NAME, DEBIAN_DIR, DIR_ENV, FILES
from shared.npz_cache import read_npz
from tests.shared.fake_datasets import fake_images, write_idx_images, write_idx_labels

TRAIN_LABELS = np.array([9, 0, 3, 7, 1, 5], np.int64)
TEST_LABELS = np.array([2, 8, 4], np.int64)


def write_debian_tree(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write the four gzipped IDX files Debian installs; return the train and test images."""
    folder.mkdir(parents=True, exist_ok=True)
    train, test = fake_images(6, (28, 28)), fake_images(3, (28, 28), offset=7)
    for split, images, labels in (("train", train, TRAIN_LABELS), ("test", test, TEST_LABELS)):
        raw_images, raw_labels = folder / "images.raw", folder / "labels.raw"
        write_idx_images(raw_images, images)
        write_idx_labels(raw_labels, labels)
        for kind, raw in (("images", raw_images), ("labels", raw_labels)):
            (folder / FILES[f"{split}_{kind}"]).write_bytes(gzip.compress(raw.read_bytes()))
            raw.unlink()
    return train, test


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    """A fake Debian tree that `fashion-mnist` is pointed at through the environment."""
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "system"))
    return write_debian_tree(tmp_path / "system")


def test_loads_the_debian_layout_as_uint8(tmp_path: Path, tree: tuple[np.ndarray, ...]) -> None:
    dataset = load_dataset("fashion-mnist", data_dir=tmp_path / "data")
    assert dataset.train.pixels.shape == (6, 1, 28, 28)
    assert dataset.train.pixels.dtype == np.uint8
    np.testing.assert_array_equal(dataset.train.pixels[:, 0], tree[0])
    np.testing.assert_array_equal(dataset.test.pixels[:, 0], tree[1])
    np.testing.assert_array_equal(dataset.train.labels, TRAIN_LABELS)
    np.testing.assert_array_equal(dataset.test.labels, TEST_LABELS)
    assert dataset.class_names == FASHION_CLASSES
    assert (dataset.num_classes, dataset.in_channels, dataset.image_size) == (10, 1, 28)
    # The same constants as torchvision's layout: (pixel / 255 - 0.2860) / 0.3530.
    expected = (tree[1][0, 0, 0] / 255 - 0.2860) / 0.3530
    assert dataset.test.images[0, 0, 0, 0] == pytest.approx(expected, abs=1e-6)


def test_second_load_reads_the_cache(
    tmp_path: Path, tree: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset("fashion-mnist", data_dir=tmp_path / "data")
    assert (tmp_path / "data" / CACHE_NAME).is_file()

    def no_parse(folder: Path) -> None:
        raise AssertionError("parsed the IDX files although the cache is valid")

    monkeypatch.setattr(fashion_mnist, "_parse", no_parse)
    again = load_dataset("fashion-mnist", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(again.train.pixels, first.train.pixels)
    np.testing.assert_array_equal(again.test.labels, first.test.labels)
    assert not list((tmp_path / "data" / "cache").glob(".*.tmp"))  # no temp file left


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other source"])
def test_a_bad_cache_is_rebuilt(tmp_path: Path, tree: tuple[np.ndarray, ...], damage: str) -> None:
    data_dir = tmp_path / "data"
    load_dataset("fashion-mnist", data_dir=data_dir)
    cache = data_dir / CACHE_NAME
    if damage == "garbage":
        cache.write_bytes(b"not an npz file")
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:1000])
    else:  # the system files changed after the cache was written
        labels = tmp_path / "system" / FILES["train_labels"]
        stat = labels.stat()
        os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    dataset = load_dataset("fashion-mnist", data_dir=data_dir)
    np.testing.assert_array_equal(dataset.train.pixels[:, 0], tree[0])
    np.testing.assert_array_equal(dataset.train.labels, TRAIN_LABELS)
    rebuilt = read_npz(cache, tuple(FILES))
    assert rebuilt is not None
    np.testing.assert_array_equal(rebuilt["test_labels"], TEST_LABELS)


def test_an_incomplete_tree_falls_back_to_torchvision_files(
    tmp_path: Path, tree: tuple[np.ndarray, ...]
) -> None:
    (tmp_path / "system" / FILES["test_labels"]).unlink()
    assert fashion_mnist.system_dir() is None
    with pytest.raises(DatasetError, match=r"FashionMNIST files not found in .*FashionMNIST/raw"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "data")


_INSTALLED = all((DEBIAN_DIR / name).is_file() for name in FILES.values())


@pytest.mark.skipif(
    not _INSTALLED,
    reason=f"Debian's dataset-fashion-mnist is not installed (no files in {DEBIAN_DIR})",
)
def test_the_installed_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DIR_ENV, raising=False)
    dataset = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert dataset.train.pixels.shape == (60000, 1, 28, 28)
    assert dataset.test.pixels.shape == (10000, 1, 28, 28)
    assert dataset.train.pixels.dtype == np.uint8
    for split in (dataset.train, dataset.test):
        assert set(np.unique(split.labels).tolist()) == set(range(10))
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert np.bincount(dataset.train.labels).tolist() == [6000] * 10
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10
