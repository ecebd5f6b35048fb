"""Blockwise 8- and 4-bit quantization: blocks by hand, error bounds, stochastic rounding."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared.compression import CompressionSpec, EncodingError, decode_tensor, encode_tensor
from shared.compression.blockwise import code_range, pack_nibbles, unpack_nibbles
from shared.errors import NonFiniteTensor, TensorSizeError
from shared.wire_tensors import TensorSpec


def _spec(encoding: str = "q8", **params: Any) -> CompressionSpec:
    return CompressionSpec(encoding=encoding, block_size=params.pop("block_size", 64), **params)


def _decode(wire_map: dict[str, Any], size: int) -> np.ndarray:
    return decode_tensor("w", wire_map, TensorSpec((size,), "float32"))


def _f32(*values: float) -> bytes:
    return np.array(values, "<f4").tobytes()


# ---------------------------------------------------------------------------- by hand


def test_q4_absmax_block_by_hand() -> None:
    # max|x| = 0.875, Q = 7: scale 0.125; x / scale = 7, -3, 1.5, 2.5, -7; ties go to even
    x = np.array([0.875, -0.375, 0.1875, 0.3125, -0.875], np.float32)
    wire_map = encode_tensor("w", x, _spec("q4"))
    assert wire_map == {
        "encoding": "q4",
        "dtype": "float32",
        "shape": [5],
        "block_size": 64,
        "scheme": "absmax",
        "scales": _f32(0.125),
        # codes 7, -3, 2, 2, -7 as nibbles 7, d, 2, 2, 9: low nibble first, padding 0
        "data": bytes([0xD7, 0x22, 0x09]),
    }
    assert _decode(wire_map, 5).tolist() == [0.875, -0.375, 0.25, 0.25, -0.875]


def test_q4_minmax_block_by_hand() -> None:
    # min 1, max 4.75, L = 15: scale 0.25; (x - min) / scale = 0, 15, 4, 0.5 -> 0 (even)
    x = np.array([1.0, 4.75, 2.0, 1.125], np.float32)
    wire_map = encode_tensor("w", x, _spec("q4", scheme="minmax"))
    assert wire_map["mins"] == _f32(1.0)
    assert wire_map["scales"] == _f32(0.25)
    assert wire_map["data"] == bytes([0xF0, 0x04])
    assert list(wire_map) == [
        "encoding",
        "dtype",
        "shape",
        "block_size",
        "scheme",
        "mins",
        "scales",
        "data",
    ]
    assert _decode(wire_map, 4).tolist() == [1.0, 4.75, 2.0, 1.0]


def test_q8_blocks_by_hand() -> None:
    # blocks of 64, 64 and a short one of 2; max|x| 127 * 2^-7, 127 * 2^-6 and 0
    x = np.zeros(130, np.float32)
    x[[0, 1, 2]] = [0.9921875, -0.5, 0.49609375]  # codes 127, -64, 63.5 -> 64
    x[[64, 100, 101]] = [-1.984375, 0.9921875, 0.9765625]  # -127, 63.5 -> 64, 62.5 -> 62
    wire_map = encode_tensor("w", x, _spec("q8"))
    assert wire_map["scales"] == _f32(2.0**-7, 2.0**-6, 0.0)
    codes = np.frombuffer(wire_map["data"], np.int8)
    assert codes[[0, 1, 2, 64, 100, 101]].tolist() == [127, -64, 64, -127, 64, 62]
    assert np.count_nonzero(codes) == 6


def test_scales_are_rounded_up_to_float32() -> None:
    x = np.zeros(128, np.float32)
    x[0], x[64] = 1.0, 2.0
    scales = np.frombuffer(encode_tensor("w", x, _spec("q8"))["scales"], "<f4")
    for scale, exact in zip(scales.tolist(), [1 / 127, 2 / 127], strict=True):
        assert scale >= exact  # the float32 nearest to 1/127 is below it: one step up
        assert float(np.nextafter(np.float32(scale), np.float32(0))) < exact


def test_the_worked_example_of_docs_protocol() -> None:
    x = np.array([0.0125, -0.0254, 0.0031, 0.0, 0.0127, -0.0001, 0.02, -0.0127], np.float32)
    wire_map = encode_tensor("t", x, _spec("q8"))
    assert wire_map["scales"] == bytes.fromhex("18b75139")
    assert np.frombuffer(wire_map["data"], np.int8).tolist() == [62, -127, 16, 0, 63, 0, 100, -63]
    assert len(msgpack.packb(wire_map)) == 89
    error = np.abs(_decode(wire_map, 8).astype(np.float64) - x)
    assert (error <= 0.0001 + np.abs(np.spacing(x)).astype(np.float64)).all()
    assert error[2] > 0.0001  # 15.5 in float32, the tie, went up to 16


def test_nibble_order_and_sign() -> None:
    codes = np.array([1, -1, -7, 7, 0], np.int8)
    packed = pack_nibbles(codes)
    assert packed == bytes([0xF1, 0x79, 0x00])
    unpacked = unpack_nibbles(np.frombuffer(packed, np.uint8), signed=True)
    assert unpacked[:5].tolist() == [1, -1, -7, 7, 0]
    assert code_range(4, "absmax") == (-7, 7)
    assert code_range(8, "minmax") == (0, 255)


# ---------------------------------------------------------------------------- bounds

VALUES = st.floats(-(2.0**64), 2.0**64, width=32)
ARRAYS = hnp.arrays(np.float32, st.integers(0, 300), elements=VALUES)
SCHEMES = st.sampled_from(["absmax", "minmax"])


def _per_element_scale(wire_map: dict[str, Any], size: int) -> np.ndarray:
    scales = np.frombuffer(wire_map["scales"], "<f4").astype(np.float64)
    return np.repeat(scales, wire_map["block_size"])[:size]


def _error_and_slack(x: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|x - x'| in float64, and the float32 rounding the bound allows: one ulp of x and x'."""
    error = np.abs(x.astype(np.float64) - out)
    return error, np.spacing(np.maximum(np.abs(x), np.abs(out))).astype(np.float64)


@settings(deadline=None, max_examples=150)
@given(x=ARRAYS, bits=st.sampled_from([4, 8]), scheme=SCHEMES, block=st.sampled_from([64, 100]))
def test_nearest_error_is_at_most_half_a_scale(
    x: np.ndarray, bits: int, scheme: str, block: int
) -> None:
    wire_map = encode_tensor("w", x, _spec(f"q{bits}", scheme=scheme, block_size=block))
    scale = _per_element_scale(wire_map, x.size)
    error, slack = _error_and_slack(x, _decode(wire_map, x.size))
    assert (error <= scale * (0.5 + 2.0**-12) + slack).all()


@settings(deadline=None, max_examples=100)
@given(x=ARRAYS, bits=st.sampled_from([4, 8]), scheme=SCHEMES, seed=st.integers(0, 2**32))
def test_stochastic_error_is_below_one_scale(
    x: np.ndarray, bits: int, scheme: str, seed: int
) -> None:
    spec = _spec(f"q{bits}", scheme=scheme, rounding="stochastic")
    wire_map = encode_tensor("w", x, spec, np.random.default_rng(seed))
    scale = _per_element_scale(wire_map, x.size)
    error, slack = _error_and_slack(x, _decode(wire_map, x.size))
    assert (error <= scale * (1 + 2.0**-12) + slack).all()
    again = encode_tensor("w", x, spec, np.random.default_rng(seed))
    assert again == wire_map  # same seed: the same bytes


FIXED = (np.random.default_rng(7).standard_normal(200) * 1e-3).astype(np.float32)


@pytest.mark.parametrize(("bits", "scheme"), [(8, "absmax"), (4, "absmax"), (4, "minmax")])
def test_stochastic_rounding_is_unbiased(bits: int, scheme: str) -> None:
    spec = _spec(f"q{bits}", scheme=scheme, rounding="stochastic")
    seeds = 2000
    total = np.zeros(FIXED.size)
    for seed in range(seeds):
        total += _decode(encode_tensor("w", FIXED, spec, np.random.default_rng(seed)), FIXED.size)
    scale = _per_element_scale(encode_tensor("w", FIXED, spec, np.random.default_rng(0)), 200)
    # each decoded value is x rounded down or up by one scale: its std is at most scale / 2
    standard_error = scale / 2 / np.sqrt(seeds)
    assert (np.abs(total / seeds - FIXED) <= 5 * standard_error).all()
    nearest = _decode(encode_tensor("w", FIXED, _spec(f"q{bits}", scheme=scheme)), 200)
    assert np.abs(total / seeds - FIXED).mean() < np.abs(nearest - FIXED).mean() / 4


def test_stochastic_rounding_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="Generator"):
        encode_tensor("w", FIXED, _spec(rounding="stochastic"))


def test_zero_blocks_and_constant_minmax_blocks_are_exact() -> None:
    x = np.concatenate([np.full(64, 0.3, np.float32), np.zeros(70, np.float32)])
    minmax = encode_tensor("w", x, _spec(scheme="minmax"))
    assert minmax["scales"] == _f32(0.0, 0.0, 0.0)
    assert _decode(minmax, x.size).tolist() == x.tolist()
    absmax = _decode(encode_tensor("w", x, _spec()), x.size)
    assert absmax[64:].tolist() == x[64:].tolist()


def test_values_beyond_2_to_64_are_refused() -> None:
    x = np.array([1.0, 2.0**65], np.float32)
    with pytest.raises(EncodingError, match="2\\^64"):
        encode_tensor("w", x, _spec())


# ---------------------------------------------------------------------------- decoding checks


def _q8(**fields: Any) -> dict[str, Any]:
    base = {
        "encoding": "q8",
        "dtype": "float32",
        "shape": [65],
        "block_size": 64,
        "scheme": "absmax",
        "scales": _f32(0.5, 0.25),
        "data": bytes(65),
    }
    return {**base, **fields}


@pytest.mark.parametrize(
    ("fields", "error", "problem"),
    [
        ({"scales": _f32(0.5)}, TensorSizeError, "scales holds 4 bytes; 2 float32 need 8"),
        ({"block_size": 32}, EncodingError, "block_size must be an int from 64 to 4096"),
        ({"block_size": True}, EncodingError, "block_size must be an int"),
        ({"block_size": 65}, TensorSizeError, "scales holds 8 bytes; 1 float32 need 4"),
        ({"data": bytes(64)}, TensorSizeError, "data holds 64 bytes"),
        ({"scales": _f32(0.5, np.nan)}, NonFiniteTensor, "scales"),
        ({"scales": _f32(np.inf, 1)}, NonFiniteTensor, "scales"),
        ({"scales": _f32(-0.5, 1)}, EncodingError, "scales must lie in"),
        ({"scales": _f32(2.0**65, 1)}, EncodingError, "scales must lie in"),
        ({"data": bytes(64) + b"\x80"}, EncodingError, "code -128"),
        ({"scheme": "minmax"}, EncodingError, "lacks field 'mins'"),
        ({"scheme": "log"}, EncodingError, "scheme must be one of absmax, minmax"),
        ({"mins": _f32(0, 0)}, EncodingError, "unknown field 'mins'"),
        ({"scheme": "minmax", "mins": _f32(0, np.nan)}, NonFiniteTensor, "mins"),
        ({"scales": "ab"}, EncodingError, "scales must be msgpack bin, got str"),
    ],
)
def test_q8_fields_are_validated(
    fields: dict[str, Any], error: type[Exception], problem: str
) -> None:
    with pytest.raises(error, match=problem) as info:
        _decode(_q8(**fields), 65)
    assert info.value.tensor == "w"  # type: ignore[attr-defined]


def test_q4_codes_are_validated() -> None:
    q4 = {**_q8(encoding="q4", shape=[3], scales=_f32(1.0)), "data": bytes([0x21, 0x03])}
    assert _decode(q4, 3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(EncodingError, match="padding nibble"):
        _decode({**q4, "data": bytes([0x21, 0x13])}, 3)
    with pytest.raises(EncodingError, match="nibble 8"):
        _decode({**q4, "data": bytes([0x81, 0x03])}, 3)
    minmax = {**q4, "scheme": "minmax", "mins": _f32(0.0), "data": bytes([0x8F, 0x00])}
    assert _decode(minmax, 3).tolist() == [15.0, 8.0, 0.0]
    with pytest.raises(TensorSizeError):
        _decode({**q4, "data": bytes(3)}, 3)
