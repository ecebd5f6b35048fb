"""Tests for shared/idx.py: IDX files round-trip, gzipped or not; bad headers name the file."""

from __future__ import annotations

import gzip
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from shared.errors import DatasetError
from shared.idx import read_idx, read_idx_images, read_idx_labels


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: magic 0x0000 08 <ndim>, dims, data."""
    header = struct.pack(f">HBB{array.ndim}I", 0, 0x08, array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, *, gzipped: bool) -> Path:
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


@settings(max_examples=60, deadline=None)
@given(
    array=arrays(np.uint8, array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
    gzipped=st.booleans(),
)
def test_round_trip(array: np.ndarray, gzipped: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / "x-idx", idx_bytes(array), gzipped=gzipped)
        out = read_idx(path)
    assert out.dtype == np.uint8
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


@settings(max_examples=40, deadline=None)
@given(
    array=arrays(np.uint8, array_shapes(min_dims=1, max_dims=3, max_side=4)),
    cut=st.integers(min_value=1, max_value=8),
    extra=st.booleans(),
    gzipped=st.booleans(),
)
def test_data_size_must_match_the_header(
    array: np.ndarray, cut: int, extra: bool, gzipped: bool
) -> None:
    data = idx_bytes(array)
    header = 4 + 4 * array.ndim
    data = data + b"\0" * cut if extra else data[: max(header, len(data) - cut)]
    if len(data) - header == array.size:
        return  # the cut left nothing to remove
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / "bad-idx", data, gzipped=gzipped)
        with pytest.raises(
            DatasetError, match=rf"{re.escape(str(path))}: IDX header says .* bytes of data"
        ):
            read_idx(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short for an IDX header"),
        (struct.pack(">HBBI", 0, 0x0D, 1, 0), r"bad IDX magic 0x00000d01"),  # float32 type
        (struct.pack(">HBBI", 1, 0x08, 1, 0), r"bad IDX magic 0x00010801"),
        (struct.pack(">HBB", 0, 0x08, 3) + b"\0\0\0\1", r"truncated IDX header \(8 of 16"),
        (struct.pack(">HBB2I", 0, 0x08, 2, 2**17, 2**17), r"asks for 17179869184 bytes"),
    ],
)
def test_bad_headers_name_the_file(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path / "broken-idx3-ubyte", data, gzipped=False)
    with pytest.raises(DatasetError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_images_and_labels_check_dimensions(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels", idx_bytes(np.array([1, 2], np.uint8)), gzipped=True)
    with pytest.raises(DatasetError, match=r"labels: IDX file of 1 dimensions; expected 3"):
        read_idx_images(labels)
    out = read_idx_labels(labels)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [1, 2])


def test_labels_above_the_classes_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "labels", idx_bytes(np.array([3, 10], np.uint8)), gzipped=False)
    with pytest.raises(DatasetError, match=r"label 10 is not below 10"):
        read_idx_labels(path)


def test_corrupt_gzip_and_missing_file_name_the_file(tmp_path: Path) -> None:
    gz = gzip.compress(idx_bytes(np.zeros((2, 2), np.uint8)))
    path = write(tmp_path / "cut.gz", gz[: len(gz) // 2], gzipped=False)
    with pytest.raises(DatasetError, match=rf"could not read {re.escape(str(path))}"):
        read_idx(path)
    with pytest.raises(DatasetError, match=r"could not read .*absent"):
        read_idx(tmp_path / "absent")
