"""Tests of aggregator_service/store/files.py: atomic writes, whole reads, npz, checksums."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from aggregator_service.store import files


@pytest.fixture
def hashing() -> Iterator[futures.Executor]:
    with futures.ThreadPoolExecutor(1) as pool:
        yield pool


def test_write_atomic_returns_the_sha256_of_what_it_wrote(
    tmp_path: Path, hashing: futures.Executor
) -> None:
    path = tmp_path / "a.bin"
    digest = files.write_atomic(path, lambda f: f.write(b"tributary" * 1000), hashing)
    assert path.read_bytes() == b"tributary" * 1000
    assert digest == hashlib.sha256(b"tributary" * 1000).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # of the file on disk
    assert list(tmp_path.iterdir()) == [path]  # no temp file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, hashing: futures.Executor
) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def fail_halfway(file: BinaryIO) -> None:
        file.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(path, fail_halfway, hashing)
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_npz_read_keeps_order_dtypes_and_zero_dim_arrays(tmp_path: Path) -> None:
    weights: dict[str, np.ndarray] = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "steps": np.array(7, dtype=np.int64),
        "flag": np.array([True, False]),
    }
    path = tmp_path / "m.npz"
    np.savez(path, allow_pickle=False, **weights)  # how older checkpoints were written
    back = files.read_npz(path)
    assert list(back) == list(weights)
    for name, array in weights.items():
        assert back[name].dtype == array.dtype
        assert back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


def test_npz_read_refuses_object_arrays_rather_than_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, bad=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        files.read_npz(path)


def test_read_whole_returns_a_writable_copy_of_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    content = bytes(range(256)) * 5000
    path.write_bytes(content)
    data = files.read_whole(path)
    assert isinstance(data, bytearray)
    assert data == content
