"""float16 and bfloat16: rounding to nearest even by hand, exact round trips, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared.compression import CompressionSpec, EncodingError, decode_tensor, encode_tensor
from shared.compression.halves import bf16_bits
from shared.errors import NonFiniteTensor, TensorSizeError
from shared.wire_tensors import TensorSpec

F16 = CompressionSpec(encoding="f16")
BF16 = CompressionSpec(encoding="bf16")
BF16_MAX = 3.3895313892515355e38  # 0x7F7F: the largest finite bfloat16


def _round_trip(x: np.ndarray, spec: CompressionSpec) -> np.ndarray:
    wire_map = encode_tensor("w", x, spec)
    return decode_tensor("w", wire_map, TensorSpec(x.shape, "float32"))


def _bf16_reference(x: np.ndarray) -> np.ndarray:
    """x rounded to 8 significant bits (quantum 2^-133 at least), ties to even, in float64."""
    wide = x.astype(np.float64)
    _, exponent = np.frexp(wide)  # wide = m * 2^exponent, 0.5 <= |m| < 1
    quantum = np.exp2(np.maximum(exponent - 8, -133).astype(np.float64))
    rounded: np.ndarray = np.rint(wide / quantum) * quantum
    return rounded


# ---------------------------------------------------------------------------- by hand


@pytest.mark.parametrize(
    ("value", "bits", "decoded"),
    [
        (1.0, 0x3F80, 1.0),
        (1.00390625, 0x3F80, 1.0),  # 1 + 2^-8: exactly half way, the kept bit is even: down
        (1.01171875, 0x3F82, 1.015625),  # 1 + 3 * 2^-8: half way, kept bit odd: up to even
        (1.005859375, 0x3F81, 1.0078125),  # 1 + 1.5 * 2^-8: above half way: up
        (-1.00390625, 0xBF80, -1.0),
        (0.0, 0x0000, 0.0),
        (-0.0, 0x8000, -0.0),
        (BF16_MAX, 0x7F7F, BF16_MAX),
        (2.0**-149, 0x0000, 0.0),  # the smallest float32 subnormal rounds to 0
    ],
)
def test_bf16_by_hand(value: float, bits: int, decoded: float) -> None:
    x = np.array([value], np.float32)
    wire_map = encode_tensor("w", x, BF16)
    assert wire_map == {
        "encoding": "bf16",
        "dtype": "float32",
        "shape": [1],
        "data": bits.to_bytes(2, "little"),
    }
    out = decode_tensor("w", wire_map, TensorSpec((1,), "float32"))
    assert out.tobytes() == np.array([decoded], np.float32).tobytes()


def test_f16_by_hand() -> None:
    x = np.array([1.0, -2.0, 65504.0, 1.0 + 2.0**-11], np.float32)
    wire_map = encode_tensor("w", x, F16)
    assert wire_map["data"] == bytes.fromhex("003c 00c0 ff7b 003c")
    assert _round_trip(x, F16).tolist() == [1.0, -2.0, 65504.0, 1.0]


# ---------------------------------------------------------------------------- properties

FINITE32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(deadline=None, max_examples=200)
@given(hnp.arrays(np.float16, hnp.array_shapes(max_dims=3), elements=st.floats(width=16)))
def test_f16_is_lossless_on_float16_values(half: np.ndarray) -> None:
    half = half[np.isfinite(half)]
    x = half.astype(np.float32)
    assert _round_trip(x, F16).tobytes() == x.tobytes()


@settings(deadline=None, max_examples=200)
@given(
    hnp.arrays(
        np.float32, st.integers(0, 50), elements=FINITE32.filter(lambda v: abs(v) <= BF16_MAX)
    )
)
def test_bf16_rounds_to_nearest_even(x: np.ndarray) -> None:
    out = _round_trip(x, BF16)
    assert np.array_equal(out.astype(np.float64), _bf16_reference(x))
    assert _round_trip(out, BF16).tobytes() == out.tobytes()  # bfloat16 values: lossless


@settings(deadline=None, max_examples=100)
@given(hnp.arrays(np.float32, st.integers(1, 50), elements=FINITE32))
def test_f16_and_bf16_errors_stay_within_half_an_ulp(x: np.ndarray) -> None:
    small = x[np.abs(x) < 65504]
    if small.size:
        error = np.abs(_round_trip(small, F16).astype(np.float64) - small)
        assert (error <= np.maximum(np.abs(small) * 2.0**-11, 2.0**-25)).all()
    fits = x[np.abs(x) <= BF16_MAX]
    if fits.size:
        error = np.abs(_round_trip(fits, BF16).astype(np.float64) - fits)
        assert (error <= np.maximum(np.abs(fits) * 2.0**-8, 2.0**-134)).all()


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("spec", [F16, BF16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_naming_the_tensor(spec: CompressionSpec, bad: float) -> None:
    with pytest.raises(NonFiniteTensor) as info:
        encode_tensor("conv1.weight", np.array([1.0, bad], np.float32), spec)
    assert info.value.tensor == "conv1.weight"


def test_values_rounding_to_inf_are_refused() -> None:
    halfway, below = np.array([0x7F7F8000, 0x7F7F7FFF], np.uint32).view(np.float32)
    assert bf16_bits(np.array([halfway, below, -halfway])).tolist() == [0x7F80, 0x7F7F, 0xFF80]
    with pytest.raises(NonFiniteTensor, match="bfloat16"):
        encode_tensor("w", np.array([0.0, -halfway], np.float32), BF16)
    assert _round_trip(np.array([below], np.float32), BF16)[0] == BF16_MAX
    with pytest.raises(NonFiniteTensor, match="float16"):
        encode_tensor("w", np.array([65520.0], np.float32), F16)


@pytest.mark.parametrize(
    ("encoding", "bits"), [("f16", 0x7C00), ("f16", 0xFE00), ("bf16", 0x7F80), ("bf16", 0xFFC1)]
)
def test_nan_and_inf_patterns_are_refused(encoding: str, bits: int) -> None:
    data = bytes(2) + bits.to_bytes(2, "little")
    wire_map = {"encoding": encoding, "dtype": "float32", "shape": [2], "data": data}
    with pytest.raises(NonFiniteTensor):
        decode_tensor("w", wire_map, TensorSpec((2,), "float32"))


def test_data_length_and_fields_are_checked() -> None:
    expected = TensorSpec((3,), "float32")
    good = {"encoding": "bf16", "dtype": "float32", "shape": [3], "data": bytes(6)}
    with pytest.raises(TensorSizeError, match="data holds 5 bytes"):
        decode_tensor("w", {**good, "data": bytes(5)}, expected)
    with pytest.raises(EncodingError, match="unknown field 'scales'"):
        decode_tensor("w", {**good, "scales": b""}, expected)
    with pytest.raises(EncodingError, match="lacks field 'data'"):
        decode_tensor("w", {k: v for k, v in good.items() if k != "data"}, expected)
