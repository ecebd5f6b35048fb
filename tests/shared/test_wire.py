"""The wire codec: bit-exact round trips, validation errors that name the tensor, float16."""

from __future__ import annotations

import subprocess
import sys
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
    ProtocolVersionError,
    SpecMismatch,
    TensorError,
    TensorSizeError,
    UnsupportedDtype,
)
from shared.wire import (
    DTYPES,
    MAX_GROUPS,
    MAX_NDIM,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOLS,
    TensorSpec,
    _all_finite,
    check_protocol,
    decode_groups,
    decode_message,
    decode_tensor,
    decode_weights,
    encode_chunks,
    encode_message,
    protocol_for,
    spec_of,
    to_float16,
)

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
LAYOUTS = ["c", "transposed", "reversed", "big-endian"]


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray:
    """An array of any wire dtype and layout: C order, transposed, reversed or big-endian."""
    array: np.ndarray = draw(hnp.arrays(st.sampled_from(sorted(DTYPES)), SHAPES))
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "transposed":
        return array.T
    if layout == "reversed" and array.ndim:
        return array[::-1]
    if layout == "big-endian":
        return array.astype(array.dtype.newbyteorder(">"))
    return array


def _wire_bytes(array: np.ndarray) -> bytes:
    """The bytes the wire must carry: little-endian, C order (numpy's own conversion)."""
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C").tobytes()


def _pack(tensor: Any, name: str = "fc.weight") -> bytes:
    """A message holding one hand-built tensor map, packed by msgpack-python itself."""
    return msgpack.packb({"protocol": 1, "weights": {name: tensor}}, use_bin_type=True)


def _decode(payload: bytes | bytearray, **kwargs: Any) -> dict[str, np.ndarray]:
    return decode_weights(decode_message(payload)["weights"], **kwargs)


F32_TENSOR = {"dtype": "float32", "shape": [2, 3], "data": bytes(24)}


# ---------------------------------------------------------------------------- round trips


@settings(deadline=None, max_examples=200)
@given(arrays=st.lists(tensors(), max_size=6))
def test_round_trip_is_bit_exact(arrays: list[np.ndarray]) -> None:
    weights = {f"layer{i}.weight": a for i, a in enumerate(reversed(arrays))}
    payload = encode_message({"protocol": 1, "weights": weights})
    decoded = _decode(payload, allow_nonfinite=True)
    assert list(decoded) == list(weights)
    base = np.frombuffer(payload, np.uint8)
    for name, array in weights.items():
        out = decoded[name]
        assert out.dtype == array.dtype.newbyteorder("<")
        assert out.dtype.name == array.dtype.name
        assert out.shape == array.shape
        assert out.tobytes() == _wire_bytes(array)
        assert not out.flags.writeable
        assert out.size == 0 or np.shares_memory(out, base)


@settings(deadline=None, max_examples=50)
@given(arrays=st.lists(tensors(), min_size=1, max_size=4))
def test_msgpack_python_reads_what_we_write(arrays: list[np.ndarray]) -> None:
    weights = {f"t{i}": a for i, a in enumerate(arrays)}
    reference = msgpack.unpackb(encode_message({"weights": weights}), raw=False)
    for name, array in weights.items():
        tensor = reference["weights"][name]
        assert tensor == {
            "dtype": array.dtype.name,
            "shape": list(array.shape),
            "data": _wire_bytes(array),
        }


@settings(deadline=None, max_examples=50)
@given(arrays=st.lists(tensors(), min_size=1, max_size=6), prefix=st.text(max_size=20))
def test_tensor_data_is_aligned_to_8_bytes(arrays: list[np.ndarray], prefix: str) -> None:
    weights = {f"t{i}": a for i, a in enumerate(arrays)}
    payload = encode_message({"note": prefix, "weights": weights})
    start = np.frombuffer(payload, np.uint8).ctypes.data
    for array in _decode(payload, allow_nonfinite=True).values():
        if array.size:
            assert (array.ctypes.data - start) % 8 == 0


def test_numpy_scalars_in_other_fields() -> None:
    message = {
        "protocol": np.int64(1),
        "num_examples": np.uint32(600),
        "loss": np.float32(0.5),
        "done": np.bool_(True),
        "metrics": [np.float64(0.25), {"accuracy": np.float16(0.75)}],
    }
    decoded = decode_message(encode_message(message))
    assert decoded == {
        "protocol": 1,
        "num_examples": 600,
        "loss": 0.5,
        "done": True,
        "metrics": [0.25, {"accuracy": 0.75}],
    }
    assert type(decoded["protocol"]) is int
    assert decoded["done"] is True


def test_decoded_arrays_view_the_received_bytes() -> None:
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    payload = bytearray(encode_message({"weights": weights}))
    out = _decode(bytes(payload))["w"]
    assert not out.flags.writeable
    viewed = _decode(payload)["w"]
    assert not viewed.flags.writeable  # read-only even over a writable bytearray
    assert np.shares_memory(viewed, np.frombuffer(payload, np.uint8))
    offset = payload.index(np.float32(5).tobytes())
    payload[offset : offset + 4] = np.float32(-1).tobytes()
    assert viewed[1, 2] == -1
    np.testing.assert_array_equal(out, [[0, 1, 2], [3, 4, 5]])


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


def test_truncated_message() -> None:
    payload = encode_message({"weights": {"w": np.ones(10, np.float32)}})
    for cut in (1, 4, 20, len(payload) - 1):
        with pytest.raises(MalformedMessage, match="truncated"):
            decode_message(payload[:-cut])


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


def test_top_level_must_be_a_map() -> None:
    with pytest.raises(MalformedMessage, match="map"):
        decode_message(msgpack.packb([1, 2]))


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


# ---------------------------------------------------------------------------- protocol


@pytest.mark.parametrize("message", [{}, {"protocol": 3}, {"protocol": 0}, {"protocol": "1"}])
def test_check_protocol_rejects(message: dict[str, Any]) -> None:
    with pytest.raises(ProtocolVersionError, match=r"protocol version.*speaks 1 and 2"):
        check_protocol(message)


@pytest.mark.parametrize("version", [True, 1.0, None, [1], 2.0, "2", False])
def test_check_protocol_wants_the_int(version: Any) -> None:
    with pytest.raises(ProtocolVersionError):
        check_protocol({"protocol": version})


@pytest.mark.parametrize("version", [1, 2])
def test_check_protocol_accepts_and_returns_the_version(version: int) -> None:
    assert PROTOCOL_VERSION == 1
    assert SUPPORTED_PROTOCOLS == (1, 2)
    assert check_protocol(decode_message(encode_message({"protocol": version}))) == version


def test_check_protocol_can_be_narrowed() -> None:
    with pytest.raises(ProtocolVersionError, match=r"speaks 1$"):
        check_protocol({"protocol": 2}, supported=(1,))


@pytest.mark.parametrize("groups", [{}, {"c": {}}, None])
def test_a_version_1_message_must_not_carry_groups(groups: Any) -> None:
    with pytest.raises(MalformedMessage, match="protocol 1 message cannot carry 'groups'"):
        check_protocol({"protocol": 1, "groups": groups})
    check_protocol({"protocol": 2, "groups": groups})


def test_protocol_for_is_1_without_groups_and_2_with() -> None:
    assert protocol_for({}) == 1
    assert protocol_for({"c": {}}) == 2


def test_version_1_messages_are_unchanged_byte_for_byte() -> None:
    # The worked example of docs/protocol.md.
    message = {"protocol": 1, "weights": {"fc.bias": np.array([1.0, -2.0], np.float32)}}
    expected = bytes.fromhex(
        "82a870726f746f636f6c01a7776569676874738"
        "1a766632e626961738"
        "3a5647479706"
        "5da0007666c6f61743332a57368617065910"
        "2db000000046461746"
        "1c408"
        "0000803f000000c0"
    )
    assert encode_message(message) == expected


def test_imports_without_torch_or_fastapi() -> None:
    code = (
        "import shared.wire, sys; "
        "assert 'torch' not in sys.modules and 'fastapi' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


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


def test_encode_chunks_are_the_message_with_tensor_data_left_in_place() -> None:
    weights = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int64)}
    message = {"protocol": 1, "weights": weights, "metrics": {"loss": 0.25}}
    chunks = encode_chunks(message)
    assert b"".join(chunks) == encode_message(message)
    views = [c for c in chunks if isinstance(c, memoryview)]
    assert len(views) == 2
    assert all(v.readonly for v in views)
    assert np.shares_memory(np.frombuffer(views[0], np.uint8), weights["a"])


# ---------------------------------------------------------------------------- groups


@settings(deadline=None, max_examples=100)
@given(
    groups=st.dictionaries(
        st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z"),
        st.lists(tensors(), max_size=3),
        max_size=MAX_GROUPS,
    ),
    weights=st.lists(tensors(), max_size=3),
    prefix=st.text(max_size=20),
)
def test_groups_round_trip_bit_exact_and_aligned(
    groups: dict[str, list[np.ndarray]], weights: list[np.ndarray], prefix: str
) -> None:
    sent = {g: {f"{g}.t{i}": a for i, a in enumerate(arrays)} for g, arrays in groups.items()}
    message = {
        "protocol": 2,
        "note": prefix,
        "weights": {f"w{i}": a for i, a in enumerate(weights)},
        "groups": sent,
    }
    payload = encode_message(message)
    decoded = decode_message(payload)
    assert check_protocol(decoded) == 2
    out = decode_groups(decoded["groups"], spec=None, allow_nonfinite=True)
    assert list(out) == list(sent)
    start = np.frombuffer(payload, np.uint8).ctypes.data
    for group, tensors_in in sent.items():
        assert list(out[group]) == list(tensors_in)
        for name, array in tensors_in.items():
            got = out[group][name]
            assert got.dtype.name == array.dtype.name
            assert got.shape == array.shape
            assert got.tobytes() == _wire_bytes(array)
            if got.size:
                assert (got.ctypes.data - start) % 8 == 0


def _groups_message(groups: Any) -> Any:
    return decode_message(encode_message({"protocol": 2, "groups": groups}))["groups"]


C_SPEC = {"c": {"fc.weight": TensorSpec((2, 3), "float32")}}


def test_decode_groups_with_spec() -> None:
    sent = {"c": {"fc.weight": np.ones((2, 3), np.float32)}}
    out = decode_groups(_groups_message(sent), spec=C_SPEC)
    assert out["c"]["fc.weight"].tolist() == np.ones((2, 3)).tolist()
    assert decode_groups(None) == {}


def test_decode_groups_names_group_and_tensor() -> None:
    wrong_shape = {"c": {"fc.weight": np.ones((3, 2), np.float32)}}
    with pytest.raises(SpecMismatch, match=r"'groups\.c\.fc\.weight'.*shape") as info:
        decode_groups(_groups_message(wrong_shape), spec=C_SPEC)
    assert info.value.tensor == "groups.c.fc.weight"
    nan = {"c": {"fc.weight": np.full((2, 3), np.nan, np.float32)}}
    with pytest.raises(NonFiniteTensor, match=r"'groups\.c\.fc\.weight'"):
        decode_groups(_groups_message(nan))
    bad_dtype = {"c": {"t": {"dtype": "complex64", "shape": [], "data": b""}}}
    with pytest.raises(UnsupportedDtype, match=r"'groups\.c\.t'"):
        decode_groups(bad_dtype)


def test_decode_groups_wants_the_spec_groups_exactly() -> None:
    with pytest.raises(SpecMismatch, match=r"'groups\.c'.*missing"):
        decode_groups({}, spec=C_SPEC)
    extra = {"c": {"fc.weight": np.ones((2, 3), np.float32)}, "d": {}}
    with pytest.raises(SpecMismatch, match=r"'groups\.d'.*unexpected"):
        decode_groups(_groups_message(extra), spec=C_SPEC)


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ([], "groups must be a map"),
        ({"C": {}}, "does not match"),
        ({"1c": {}}, "does not match"),
        ({"a" * 33: {}}, "does not match"),
        ({"c-d": {}}, "does not match"),
        ({1: {}}, "does not match"),
        ({f"g{i}": {} for i in range(MAX_GROUPS + 1)}, "exceed the limit of 8"),
        ({"c": [1]}, "group 'c' must be a map"),
        ({"c": {"t": [1]}}, "group 'c'.*tensor 't'"),
    ],
)
def test_decode_groups_refuses_malformed(groups: Any, match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        decode_groups(groups)


def test_version_2_worked_example_of_the_docs() -> None:
    message = {
        "protocol": 2,
        "weights": {"fc.bias": np.array([1.0, -2.0], np.float32)},
        "groups": {"c": {"fc.bias": np.array([0.5, 0.25], np.float32)}},
    }
    payload = encode_message(message)
    assert len(payload) == 136
    assert payload[72:83] == bytes.fromhex("a667726f75707381a16381")
    assert payload[128:] == bytes.fromhex("0000003f0000803e")
