"""Top-k: selection and gaps by hand, ties, exact round trips, and refused index lists."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared.compression import CompressionSpec, EncodingError, decode_tensor, encode_tensor
from shared.compression.topk import top_k, top_k_count
from shared.errors import NonFiniteTensor, SpecMismatch, TensorSizeError, UnsupportedDtype
from shared.wire_tensors import TensorSpec

X = np.array([0.1, -5.0, 0.0, 3.0, 3.0, -3.0, 0.2], np.float32)


def _spec(fraction: float, **params: Any) -> CompressionSpec:
    return CompressionSpec(encoding="topk", fraction=fraction, **params)


def _decode(wire_map: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    return decode_tensor("w", wire_map, TensorSpec(shape, "float32"))


# ---------------------------------------------------------------------------- by hand


def test_top_3_by_hand() -> None:
    # |x| largest: 5 (index 1), then 3 at indices 3, 4, 5: the lower two win the tie
    wire_map = encode_tensor("w", X, _spec(3 / 7))
    assert wire_map == {
        "encoding": "topk",
        "dtype": "float32",
        "shape": [7],
        "nnz": 3,
        "indices": bytes([1, 2, 1]),  # indices 1, 3, 4 as gaps 1, 2, 1
        "values": np.array([-5.0, 3.0, 3.0], "<f4").tobytes(),
    }
    assert _decode(wire_map, (7,)).tolist() == [0, -5, 0, 3, 3, 0, 0]


def test_gaps_of_128_and_more_take_two_bytes() -> None:
    x = np.zeros(400, np.float32)
    x[[0, 128, 399]] = [1.0, -2.0, 3.0]
    wire_map = encode_tensor("w", x, _spec(3 / 400, values="q8"))
    assert wire_map["indices"] == bytes.fromhex("00 8001 8f02")  # gaps 0, 128, 271
    values = wire_map["values"]
    assert values["encoding"] == "q8"
    assert values["shape"] == [3]
    assert np.frombuffer(values["data"], np.int8).tolist() == [42, -85, 127]
    out = _decode(wire_map, (400,))
    assert np.flatnonzero(out).tolist() == [0, 128, 399]
    assert np.allclose(out[[0, 128, 399]], [1, -2, 3], atol=3 / 127 / 2)


@pytest.mark.parametrize(
    ("size", "fraction", "k"),
    [(0, 0.5, 0), (1, 0.001, 1), (100, 0.01, 1), (1000, 0.0005, 1), (1000, 0.0015, 2), (7, 1.0, 7)],
)
def test_k(size: int, fraction: float, k: int) -> None:
    assert top_k_count(size, fraction) == k


def test_ties_and_signed_zeros_go_to_the_lower_index() -> None:
    assert top_k(np.array([0.0, -0.0, 0.0], np.float32), 2).tolist() == [0, 1]
    assert top_k(np.array([1.0, -2.0, 2.0, -2.0], np.float32), 2).tolist() == [1, 2]


# ---------------------------------------------------------------------------- properties

ARRAYS = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@settings(deadline=None, max_examples=150)
@given(x=ARRAYS)
def test_fraction_one_is_lossless(x: np.ndarray) -> None:
    out = _decode(encode_tensor("w", x, _spec(1.0)), x.shape)
    assert out.tobytes() == x.tobytes()


@settings(deadline=None, max_examples=150)
@given(x=ARRAYS, fraction=st.floats(0.01, 1.0))
def test_keeps_the_largest_magnitudes_exactly(x: np.ndarray, fraction: float) -> None:
    wire_map = encode_tensor("w", x, _spec(fraction))
    out = _decode(wire_map, x.shape).reshape(-1)
    flat = x.reshape(-1)
    kept = top_k(flat, top_k_count(flat.size, fraction))
    assert wire_map["nnz"] == kept.size
    assert out[kept].tobytes() == flat[kept].tobytes()
    dropped = np.setdiff1d(np.arange(flat.size), kept)
    assert (out[dropped] == 0).all()
    if kept.size and dropped.size:
        assert np.abs(flat[dropped]).max() <= np.abs(flat[kept]).min()


# ---------------------------------------------------------------------------- decoding checks


def _map(**fields: Any) -> dict[str, Any]:
    base = {
        "encoding": "topk",
        "dtype": "float32",
        "shape": [2, 5],
        "nnz": 2,
        "indices": bytes([1, 3]),
        "values": np.array([1.0, 2.0], "<f4").tobytes(),
    }
    return {**base, **fields}


def test_a_valid_map() -> None:
    assert _decode(_map(), (2, 5)).tolist() == [[0, 1, 0, 0, 2], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize(
    ("fields", "error", "problem"),
    [
        ({"indices": bytes([1, 0])}, EncodingError, "gap of 0"),
        ({"indices": bytes([9, 1])}, EncodingError, "index 10 is out of range"),
        ({"indices": bytes([10, 1])}, EncodingError, "out of range"),
        ({"indices": bytes([0x81, 0x00])}, EncodingError, "hold 1 varints"),
        ({"indices": bytes([1, 0x83])}, EncodingError, "truncated"),
        ({"indices": bytes([1])}, EncodingError, "are not 2 varints"),
        ({"nnz": 11}, EncodingError, "nnz must be an int from 0 to 10"),
        ({"nnz": 3}, EncodingError, "are not 3 varints|hold 2 varints"),
        ({"nnz": -1}, EncodingError, "nnz must be"),
        ({"values": bytes(4)}, TensorSizeError, "values holds 4 bytes"),
        ({"values": np.array([1, np.nan], "<f4").tobytes()}, NonFiniteTensor, "values"),
        ({"values": [1.0, 2.0]}, EncodingError, "values must be msgpack bin"),
        ({"values": {"encoding": "f16"}}, EncodingError, "values: encoding must be q8"),
        ({"shape": [10]}, SpecMismatch, "does not match the model's"),
        ({"dtype": "float16"}, UnsupportedDtype, "decode to float32"),
    ],
)
def test_fields_are_validated(fields: dict[str, Any], error: type[Exception], problem: str) -> None:
    with pytest.raises(error, match=problem) as info:
        _decode(_map(**fields), (2, 5))
    assert info.value.tensor == "w"  # type: ignore[attr-defined]


def test_nested_q8_values_are_validated_with_their_shape() -> None:
    good = encode_tensor("w", np.arange(10, dtype=np.float32), _spec(0.2, values="q8"))
    assert _decode(good, (10,))[[8, 9]].tolist() == pytest.approx([8, 9], abs=9 / 127 / 2)
    wrong_shape = {**good, "values": {**good["values"], "shape": [3]}}
    with pytest.raises(SpecMismatch, match="values: shape \\[3\\]"):
        _decode(wrong_shape, (10,))
    nan_scale = {
        **good,
        "values": {**good["values"], "scales": np.array([np.nan], "<f4").tobytes()},
    }
    with pytest.raises(NonFiniteTensor, match="values: scales"):
        _decode(nan_scale, (10,))
