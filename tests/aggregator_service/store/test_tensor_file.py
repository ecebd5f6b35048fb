"""Tests of aggregator_service/store/tensor_file.py: safetensors, checked against the reference."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aggregator_service.store.tensor_file import read_safetensors, write_safetensors

Weights = dict[str, np.ndarray]

_DTYPES = ["bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32"]
_DTYPES += ["float32", "int64", "uint64", "float64"]


def _written(weights: Weights, metadata: dict[str, str] | None = None) -> bytes:
    file = io.BytesIO()
    write_safetensors(file, weights, metadata)
    return file.getvalue()


def _assert_same(actual: Weights, expected: Weights) -> None:
    assert list(actual) == list(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype.newbyteorder("<"), name
        assert actual[name].shape == array.shape, name
        np.testing.assert_array_equal(actual[name], array)


def _file(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


_tensors = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda name: name != "__metadata__"),
    st.sampled_from(_DTYPES).flatmap(
        lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0))
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(weights=_tensors)
def test_round_trip_and_the_reference_reader_agree(weights: Weights) -> None:
    data = _written(weights)
    _assert_same(read_safetensors(bytearray(data)), weights)
    reference = safetensors.numpy.load(data)
    assert set(reference) == set(weights)
    for name, array in weights.items():
        assert reference[name].dtype == array.dtype, name
        np.testing.assert_array_equal(reference[name], array)


def test_files_of_the_reference_writer_are_read() -> None:
    weights: Weights = {"a": np.arange(5.0), "c": np.array(3, np.int8), "z": np.ones(0)}
    data = safetensors.numpy.save(weights, metadata={"note": "from the reference"})
    back = read_safetensors(data)
    assert set(back) == set(weights)
    for name, array in weights.items():
        np.testing.assert_array_equal(back[name], array)
        assert back[name].shape == array.shape


def test_metadata_is_written_and_the_data_is_aligned_and_read_in_place() -> None:
    weights = {
        "mask": np.array([True, False, True]),  # 3 bytes: would misalign what follows
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "steps": np.array(7, np.int64),
    }
    data = bytearray(_written(weights, {"round": "12"}))
    size = int.from_bytes(data[:8], "little")
    assert (8 + size) % 8 == 0
    header = json.loads(data[8 : 8 + size])
    assert header["__metadata__"] == {"round": "12"}
    assert list(header) == ["__metadata__", "mask", "w", "steps"]
    back = read_safetensors(data)
    _assert_same(back, weights)
    for array in back.values():
        assert array.flags.aligned
        assert array.flags.writeable
    back["w"][0, 0] = 42.0  # a view of the buffer, not a copy
    assert read_safetensors(data)["w"][0, 0] == 42.0


def test_big_endian_and_non_contiguous_arrays_are_stored_little_endian_in_c_order() -> None:
    weights = {
        "big": np.array([1, -2, 3], dtype=">i4"),
        "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,
    }
    back = read_safetensors(_written(weights))
    assert back["big"].dtype == np.dtype("<i4")
    _assert_same(back, weights)


def test_object_arrays_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="'bad'"):
        _written({"bad": np.array([object()], dtype=object)})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00", "shorter than its header"),
        ((10**9).to_bytes(8, "little") + b"{}", "does not fit"),
        ((4).to_bytes(8, "little") + b"{{{{", "not JSON"),
        ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
        (_file({"__metadata__": {"a": 1}}, b""), "__metadata__"),
        (_file({"t": [1]}, b""), "'t': header entry"),
        (_file({"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"xxxx"), "dtype"),
        (_file({"t": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"xx"), "BF16"),
        (_file({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"xxxx"), "shape"),
        (_file({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"xxxx"), "offsets"),
        (_file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"xxxx"), "outside"),
        (_file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"xxxx"), "hold"),
        (_file({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"x" * 8), "starts"),
        (
            _file({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"x" * 8),
            "no tensor ",
        ),
        (
            _file(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                },
                b"x" * 8,
            ),
            "starts at 4",
        ),
    ],
    ids=[
        "short",
        "huge-header",
        "not-json",
        "not-object",
        "bad-metadata",
        "bad-entry",
        "dtype-not-a-string",
        "bf16",
        "negative-dim",
        "one-offset",
        "past-the-end",
        "wrong-size",
        "gap",
        "tail",
        "overlap",
    ],
)
def test_malformed_files_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_safetensors(data)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0), flip=st.integers(min_value=0), bit=st.integers(0, 7))
def test_damaged_files_are_refused_or_read_never_crash(cut: int, flip: int, bit: int) -> None:
    data = bytearray(_written({"w": np.arange(6, dtype=np.float32), "n": np.array(3, np.int64)}))
    data[flip % len(data)] ^= 1 << bit
    del data[len(data) - cut % len(data) :]
    try:
        back = read_safetensors(data)
    except ValueError:
        return
    header_size = int.from_bytes(data[:8], "little")
    assert sum(array.nbytes for array in back.values()) == len(data) - 8 - header_size
