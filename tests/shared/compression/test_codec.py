"""The dispatcher: every encoding through the wire, accumulation in float64, and fuzzing."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.compression import (
    CompressionSpec,
    UnknownEncoding,
    accumulate_into,
    decode_tensor,
    decode_update,
    encode_tensor,
    encode_update,
    iter_decoded,
)
from shared.compression.decoded import CHUNK
from shared.errors import (
    MalformedMessage,
    NonFiniteTensor,
    SpecMismatch,
    TensorError,
    UnsupportedDtype,
)
from shared.msgpack_reader import unpack
from shared.wire import decode_message, encode_message
from shared.wire_tensors import TensorSpec, spec_of

SPECS = [
    CompressionSpec(encoding="f16"),
    CompressionSpec(encoding="bf16"),
    CompressionSpec(encoding="q8"),
    CompressionSpec(encoding="q8", scheme="minmax", block_size=64),
    CompressionSpec(encoding="q4", block_size=64),
    CompressionSpec(encoding="q4", scheme="minmax", rounding="stochastic"),
    CompressionSpec(encoding="topk", fraction=0.3),
    CompressionSpec(encoding="topk", fraction=0.3, values="q8", scheme="minmax", block_size=64),
]
IDS = [f"{s.encoding}-{s.scheme}-{s.values}" for s in SPECS]
X = (np.random.default_rng(1).standard_normal((3, 47)) * 1e-3).astype(np.float32)
EXPECTED = TensorSpec((3, 47), "float32")


def _encode(spec: CompressionSpec, x: np.ndarray = X, seed: int = 0) -> dict[str, Any]:
    return encode_tensor("fc.weight", x, spec, np.random.default_rng(seed))


def test_imports_numpy_and_msgpack_only() -> None:
    code = (
        "import shared.compression, sys; "
        "assert not {'torch', 'fastapi', 'pydantic'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_through_the_wire_and_back(spec: CompressionSpec) -> None:
    deltas: dict[str, np.ndarray] = {
        "fc.weight": X,
        "fc.bias": X[0, :10].copy(),
        "steps": np.array(3, np.int64),
    }
    compression = replace(spec, min_elements=100)
    update = encode_update(deltas, compression, np.random.default_rng(0))
    assert update["fc.bias"] is deltas["fc.bias"]  # too small: plain
    assert update["steps"] is deltas["steps"]  # an integer buffer: plain
    payload = encode_message({"protocol": 2, "weights": update})
    received = decode_message(payload)["weights"]
    decoded = decode_update(received, spec_of(deltas))
    assert list(decoded) == list(deltas)
    assert decoded["fc.bias"].tobytes() == deltas["fc.bias"].tobytes()
    assert decoded["steps"] == 3
    direct = decode_tensor("fc.weight", update["fc.weight"], EXPECTED)
    assert decoded["fc.weight"].tobytes() == direct.tobytes()
    assert msgpack.unpackb(payload)["weights"]["fc.weight"] == update["fc.weight"]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_accumulate_adds_the_decoded_values_in_float64(spec: CompressionSpec) -> None:
    wire_map = _encode(spec)
    decoded = decode_tensor("fc.weight", wire_map, EXPECTED).astype(np.float64)
    total = np.full((3, 47), 1.0)
    accumulate_into(total, wire_map, 2.5, name="fc.weight")
    # the float64 sum skips the float32 rounding of code * scale and of min + that product
    slack = 2.5 * np.abs(X).max() * 2.0**-22
    assert (np.abs(total - (1.0 + 2.5 * decoded)) <= slack).all()


def test_accumulate_plain_maps_too() -> None:
    plain = msgpack.unpackb(encode_message({"w": X.astype(np.float16)}))["w"]
    total = np.zeros((3, 47))
    accumulate_into(total, plain, 0.5, name="w")
    assert total.tolist() == (0.5 * X.astype(np.float16).astype(np.float64)).tolist()
    with pytest.raises(ValueError, match="float64"):
        accumulate_into(np.zeros((3, 47), np.float32), plain, 1.0, name="w")


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[4], SPECS[7]], ids=["bf16", "q4", "topk-q8"])
def test_many_spans_decode_like_one(spec: CompressionSpec) -> None:
    size = 2 * CHUNK + 333
    x = (np.random.default_rng(2).standard_normal(size) * 1e-3).astype(np.float32)
    if "block_size" in spec.applies():
        spec = replace(spec, block_size=100)  # not a power of two
    wire_map = _encode(spec, x)
    whole = decode_tensor("w", wire_map, TensorSpec((size,), "float32"))
    pieces = np.zeros(size)
    covered = np.zeros(size, bool)
    for where, values in iter_decoded("w", wire_map, TensorSpec((size,), "float32")):
        assert values.dtype == np.float64
        assert not covered[where].any()
        covered[where] = True
        pieces[where] = values
    assert np.allclose(pieces, whole, rtol=0, atol=np.abs(x).max() * 2.0**-22)
    assert (whole[~covered] == 0).all()


def test_encode_refusals() -> None:
    with pytest.raises(UnsupportedDtype, match="only float32"):
        encode_tensor("w", X.astype(np.float64), SPECS[0])
    with pytest.raises(NonFiniteTensor, match="NaN or Inf"):
        encode_tensor("w", np.array([np.nan], np.float32), SPECS[2])


def test_any_float32_layout_is_encoded_in_c_order() -> None:
    big_endian = X.T.astype(">f4")
    out = decode_tensor("w", _encode(SPECS[6], big_endian), TensorSpec((47, 3), "float32"))
    assert (
        out.tolist()
        == decode_tensor(
            "w", _encode(SPECS[6], X.T.copy()), TensorSpec((47, 3), "float32")
        ).tolist()
    )


# ---------------------------------------------------------------------------- refusals


def test_unknown_encoding_and_wrong_expectations() -> None:
    wire_map = _encode(SPECS[2])
    with pytest.raises(UnknownEncoding, match="unknown encoding 'zstd'; this side knows f16"):
        decode_tensor("fc.weight", {**wire_map, "encoding": "zstd"}, EXPECTED)
    with pytest.raises(UnknownEncoding):
        decode_tensor("fc.weight", {**wire_map, "encoding": 8}, EXPECTED)
    with pytest.raises(SpecMismatch, match="model's is int64"):
        decode_tensor("fc.weight", wire_map, TensorSpec((3, 47), "int64"))
    with pytest.raises(
        SpecMismatch, match="shape \\[3, 47\\] does not match the model's \\[141\\]"
    ):
        decode_tensor("fc.weight", wire_map, TensorSpec((141,), "float32"))
    with pytest.raises(MalformedMessage):
        decode_tensor("fc.weight", [1, 2], EXPECTED)


def test_decode_update_checks_the_names() -> None:
    spec = {"a": TensorSpec((2,), "float32"), "b": TensorSpec((2,), "float32")}
    plain = msgpack.unpackb(encode_message({"t": np.zeros(2, np.float32)}))["t"]
    with pytest.raises(SpecMismatch, match="'b': missing"):
        decode_update({"a": plain}, spec)
    with pytest.raises(SpecMismatch, match="'c': is not a tensor"):
        decode_update({"a": plain, "b": plain, "c": plain}, spec)
    with pytest.raises(MalformedMessage):
        decode_update([plain], spec)


# ---------------------------------------------------------------------------- fuzzing

VALID = [_encode(spec) for spec in SPECS]
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=80),
    st.lists(st.integers(-3, 300), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def malformed(draw: st.DrawFn) -> dict[str, Any]:
    """A valid map with one to three fields dropped, replaced, added, cut, grown or scrambled."""
    wire_map: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        target = wire_map
        if isinstance(wire_map.get("values"), dict) and draw(st.booleans()):
            target = wire_map["values"]
        if not target:
            break
        key = draw(st.sampled_from(sorted(target)))
        value = target[key]
        action = draw(st.sampled_from(["drop", "replace", "add", "cut", "grow", "scramble"]))
        if action == "drop":
            del target[key]
        elif action == "add":
            target[draw(st.text(max_size=6))] = draw(JUNK)
        elif action == "replace" or not isinstance(value, bytes):
            target[key] = draw(JUNK)
        elif action == "cut":
            target[key] = value[: draw(st.integers(0, max(len(value) - 1, 0)))]
        elif action == "grow":
            target[key] = value + draw(st.binary(min_size=1, max_size=9))
        else:
            target[key] = draw(st.binary(min_size=len(value), max_size=len(value)))
    return wire_map


def _decode_or_refuse(obj: Any) -> None:
    """Accumulate and decode `obj`: it works, or raises a documented error and adds nothing."""
    total = np.ones((3, 47))
    error: Exception | None = None
    try:
        accumulate_into(total, obj, 1.0, name="fc.weight")
    except (TensorError, MalformedMessage) as exc:
        error = exc
    if error is not None:
        assert (total == 1).all()
        assert not isinstance(error, TensorError) or error.tensor == "fc.weight"
        with pytest.raises(type(error)):
            decode_tensor("fc.weight", obj, EXPECTED)
        return
    out = decode_tensor("fc.weight", obj, EXPECTED)
    assert out.shape == (3, 47)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert np.allclose(total - 1, out, rtol=0, atol=np.abs(out).max(initial=0) * 2.0**-20)


@settings(deadline=None, max_examples=600)
@given(malformed())
def test_malformed_maps_raise_only_documented_errors(wire_map: dict[str, Any]) -> None:
    _decode_or_refuse(wire_map)


@settings(deadline=None, max_examples=300)
@given(index=st.sampled_from(range(len(VALID))), data=st.data())
def test_corrupted_bytes_raise_only_documented_errors(index: int, data: st.DataObject) -> None:
    packed = bytearray(msgpack.packb(VALID[index]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(packed) - 1))
        packed[position] = data.draw(st.integers(0, 255))
    try:
        obj = unpack(bytes(packed))
    except MalformedMessage:
        return
    _decode_or_refuse(obj)
