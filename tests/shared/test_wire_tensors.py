"""Tensors on the wire: validation errors that name the tensor, specs, float16, finite check."""

from __future__ import annotations

from typing import Any, Literal

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared.errors import (
    MalformedMessage,
    NonFiniteTensor,
    SpecMismatch,
    TensorError,
    TensorSizeError,
    UnsupportedDtype,
)
from shared.wire import decode_message, encode_message
from shared.wire_tensors import (
    MAX_NDIM,
    TensorSpec,
    _all_finite,
    decode_tensor,
    decode_weights,
    spec_of,
    to_float16,
)


def _decode(payload: bytes | bytearray, **kwargs: Any) -> dict[str, np.ndarray]:
    return decode_weights(decode_message(payload)["weights"], **kwargs)


def _pack(tensor: Any, name: str = "fc.weight") -> bytes:
    """A message holding one hand-built tensor map, packed by msgpack-python itself."""
    return msgpack.packb({"protocol": 1, "weights": {name: tensor}}, use_bin_type=True)


F32_TENSOR = {"dtype": "float32", "shape": [2, 3], "data": bytes(24)}


# ---------------------------------------------------------------------------- spec_of


def test_spec_of_and_spec_order() -> None:
    weights: dict[str, np.ndarray] = {
        "b": np.zeros(3, np.float32),
        "a": np.zeros((2, 2), np.int64),
    }
    spec = spec_of(weights)
    assert spec == {"b": TensorSpec((3,), "float32"), "a": TensorSpec((2, 2), "int64")}
    payload = encode_message({"weights": {"a": weights["a"], "b": weights["b"]}})
    assert list(_decode(payload, spec=spec)) == ["b", "a"]


# ---------------------------------------------------------------------------- errors


def _raises(error: type[Exception], payload: bytes, name: str = "fc.weight", **kw: Any) -> None:
    with pytest.raises(error) as info:
        _decode(payload, **kw)
    assert name in str(info.value)
    if issubclass(error, TensorError):
        assert isinstance(info.value, TensorError)
        assert info.value.tensor == name


@pytest.mark.parametrize("size", [25, 28, 48, 23, 20, 0])
def test_data_size_must_match_shape(size: int) -> None:
    _raises(TensorSizeError, _pack({**F32_TENSOR, "data": bytes(size)}))


def test_zero_size_shape_too_large_for_numpy() -> None:
    _raises(TensorSizeError, _pack({"dtype": "float32", "shape": [0, 2**62], "data": b""}))
    _raises(TensorSizeError, _pack({"dtype": "uint8", "shape": [2**64 - 1, 0], "data": b""}))


@pytest.mark.parametrize(
    "fields",
    [
        {"shape": "2x3"},
        {"shape": 6},
        {"shape": [2, -3]},
        {"shape": [True, 3]},
        {"shape": [2.0, 3]},
        {"shape": [2, None]},
        {"shape": [1] * (MAX_NDIM + 1)},
        {"data": "text"},
        {"data": [0] * 24},
        {"extra": 1},
    ],
)
def test_wrong_field_types(fields: dict[str, Any]) -> None:
    _raises(MalformedMessage, _pack({**F32_TENSOR, **fields}))


def test_bool_bytes_must_be_0_or_1() -> None:
    _raises(MalformedMessage, _pack({"dtype": "bool", "shape": [3], "data": b"\x01\x00\x02"}))
    out = _decode(_pack({"dtype": "bool", "shape": [3], "data": b"\x01\x00\x01"}))
    assert out["fc.weight"].tolist() == [True, False, True]


@pytest.mark.parametrize("missing", ["dtype", "shape", "data"])
def test_missing_field(missing: str) -> None:
    tensor = {key: value for key, value in F32_TENSOR.items() if key != missing}
    _raises(MalformedMessage, _pack(tensor))


@pytest.mark.parametrize("tensor", [[1, 2], b"raw", None, 3.5])
def test_tensor_not_a_map(tensor: Any) -> None:
    _raises(MalformedMessage, _pack(tensor))


@pytest.mark.parametrize("dtype", ["object", "complex64", "float128", "<f4", "f4", "", 5, None])
def test_unknown_dtype(dtype: Any) -> None:
    _raises(UnsupportedDtype, _pack({**F32_TENSOR, "dtype": dtype}))


@pytest.mark.parametrize("dtype", ["object", "complex64", "datetime64[s]", "U3", "V4"])
def test_encoder_refuses_other_dtypes(dtype: str) -> None:
    with pytest.raises(UnsupportedDtype, match=r"'weights\.fc\.weight'"):
        encode_message({"weights": {"fc.weight": np.zeros(2, dtype=dtype)}})


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(dtype: str, bad: float) -> None:
    array = np.array([[1.0, 2.0], [bad, 4.0]], dtype=dtype)
    payload = encode_message({"weights": {"fc.weight": array}})
    _raises(NonFiniteTensor, payload)
    out = _decode(payload, allow_nonfinite=True)["fc.weight"]
    assert out.tobytes() == array.tobytes()


def test_integer_tensors_skip_the_finite_check() -> None:
    array = np.array([np.iinfo(np.int64).max] * 3, np.int64)
    out = _decode(encode_message({"weights": {"n": array}}))["n"]
    np.testing.assert_array_equal(out, array)


def test_decode_tensor_names_the_tensor() -> None:
    with pytest.raises(TensorSizeError, match=r"'conv1\.bias'"):
        decode_tensor("conv1.bias", {"dtype": "int8", "shape": [3], "data": b"ab"})


def test_weights_must_be_a_map_with_str_names() -> None:
    with pytest.raises(MalformedMessage, match="map"):
        decode_weights([F32_TENSOR])
    with pytest.raises(MalformedMessage, match="names must be strings"):
        decode_weights({7: F32_TENSOR})


# ---------------------------------------------------------------------------- spec


SPEC = {
    "conv.weight": TensorSpec((4, 1, 3, 3), "float32"),
    "bn.num_batches_tracked": TensorSpec((), "int64"),
}


def _model_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "bn.num_batches_tracked": np.array(12, np.int64),
    }


def test_spec_match() -> None:
    weights = _model_weights()
    out = _decode(encode_message({"weights": weights}), spec=SPEC)
    assert list(out) == list(SPEC)
    assert out["bn.num_batches_tracked"].shape == ()
    assert int(out["bn.num_batches_tracked"]) == 12
    np.testing.assert_array_equal(out["conv.weight"], weights["conv.weight"])


def test_spec_missing_name() -> None:
    weights = _model_weights()
    del weights["bn.num_batches_tracked"]
    payload = encode_message({"weights": weights})
    _raises(SpecMismatch, payload, "bn.num_batches_tracked", spec=SPEC)


def test_spec_extra_name() -> None:
    weights = {**_model_weights(), "fc.bias": np.zeros(10, np.float32)}
    _raises(SpecMismatch, encode_message({"weights": weights}), "fc.bias", spec=SPEC)


def test_spec_wrong_shape() -> None:
    weights = {**_model_weights(), "conv.weight": np.zeros((4, 1, 3, 2), np.float32)}
    _raises(SpecMismatch, encode_message({"weights": weights}), "conv.weight", spec=SPEC)


@pytest.mark.parametrize(("name", "dtype"), [("conv.weight", "float64"), ("conv.weight", "int32")])
def test_spec_wrong_dtype(name: str, dtype: str) -> None:
    weights = _model_weights()
    weights[name] = weights[name].astype(dtype)
    _raises(SpecMismatch, encode_message({"weights": weights}), name, spec=SPEC)


def test_spec_counter_dtype() -> None:
    weights = {**_model_weights(), "bn.num_batches_tracked": np.array(12, np.int32)}
    _raises(SpecMismatch, encode_message({"weights": weights}), "bn.num_batches_tracked", spec=SPEC)


# ---------------------------------------------------------------------------- float16


def test_float16_transport() -> None:
    weights = _model_weights()
    weights["conv.weight"][0, 0, 0] = [1e-6, 65504.0, -3.0]
    half = to_float16(weights)
    assert half["conv.weight"].dtype == np.float16
    assert half["bn.num_batches_tracked"] is weights["bn.num_batches_tracked"]
    payload = encode_message({"weights": half})
    assert len(payload) < len(encode_message({"weights": weights}))
    out = _decode(payload, spec=SPEC)
    assert out["conv.weight"].dtype == np.float32
    # float16 keeps 11 significant bits: relative error <= 2**-11, absolute 2**-25 near 0.
    np.testing.assert_allclose(out["conv.weight"], weights["conv.weight"], rtol=2**-11, atol=2**-25)
    assert out["conv.weight"][0, 0, 0, 1] == 65504.0


def test_float16_passes_other_dtypes() -> None:
    weights = {"a": np.ones(3, np.float64), "b": np.ones(3, np.int64), "c": np.ones(3, ">f4")}
    half = to_float16(weights)
    assert half["a"] is weights["a"]
    assert half["b"] is weights["b"]
    assert half["c"].dtype == np.float16


@pytest.mark.parametrize("value", [70_000.0, -1e5, 65520.0, 3e38])
def test_float16_overflow(value: float) -> None:
    weights = {"fc.weight": np.array([0.5, value], np.float32)}
    with pytest.raises(NonFiniteTensor, match=r"'fc\.weight'.*65504"):
        to_float16(weights)


def test_float16_rounds_just_below_the_overflow_threshold() -> None:
    # Above 32768 float16 steps by 32: 65519 rounds down to 65504; 65520 (a tie) rounds
    # to the even neighbour, which is Inf.
    assert to_float16({"w": np.array([65519.0], np.float32)})["w"][0] == 65504.0


def test_float16_keeps_nan_but_not_overflow_next_to_it() -> None:
    half = to_float16({"w": np.array([np.nan, 1.0], np.float32)})["w"]
    assert np.isnan(half[0])
    assert half[1] == 1.0
    with pytest.raises(NonFiniteTensor, match="'w'"):
        to_float16({"w": np.array([np.nan, 1e6], np.float32)})


# ---------------------------------------------------------------------------- finite check


FLOATS = st.sampled_from(["float16", "float32", "float64"])


FLOAT_WIDTHS: dict[int, Literal[16, 32, 64]] = {2: 16, 4: 32, 8: 64}  # itemsize -> bits


@st.composite
def float_arrays(draw: st.DrawFn) -> np.ndarray:
    """Float arrays with any values, often the extremes whose sum overflows."""
    dtype = np.dtype(draw(FLOATS))
    info = np.finfo(dtype)
    extremes = st.sampled_from([float(info.max), -float(info.max), float(info.max) / 2])
    elements = st.floats(width=FLOAT_WIDTHS[dtype.itemsize]) | extremes
    shape = hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=40)
    array: np.ndarray = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.booleans()):
        array = array.astype(dtype.newbyteorder(">"))
    return array[::2] if draw(st.booleans()) else array


@settings(deadline=None, max_examples=300)
@given(array=float_arrays())
def test_all_finite_agrees_with_isfinite(array: np.ndarray) -> None:
    assert _all_finite(array) == bool(np.isfinite(array).all())


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_all_finite_when_the_sum_overflows(dtype: str) -> None:
    big = np.finfo(dtype).max
    assert _all_finite(np.full(1000, big, dtype))
    assert _all_finite(np.array([big, big, -big, -big, big], dtype))
    assert not _all_finite(np.array([big, big, np.inf], dtype))
    assert not _all_finite(np.array([np.inf, -np.inf], dtype))
    assert not _all_finite(np.array([big, np.nan, -big], dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_a_bad_element_anywhere_in_a_large_tensor(dtype: str, bad: float) -> None:
    array = np.random.default_rng(3).standard_normal(1_000_003).astype(dtype)
    assert _all_finite(array)
    for index in (0, 1, 500_000, array.size - 2, array.size - 1):
        spoiled = array.copy()
        spoiled[index] = bad
        assert not _all_finite(spoiled), index


def test_all_finite_reads_big_endian_float16() -> None:
    # 124 * 2**-24 is the float16 subnormal with bits 0x007C; byte-swapped they read 0x7C00,
    # the bits of +Inf.
    tiny = np.array([124 * 2.0**-24], np.float16)
    assert tiny.view(np.uint16)[0] == 0x007C
    assert _all_finite(tiny.astype(">f2"))
    assert not _all_finite(np.array([1.0, np.inf], ">f2"))
