"""The wire codec: messages, bit-exact round trips, protocol versions, tensor groups."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

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
    UnsupportedDtype,
)
from shared.wire import (
    DTYPES,
    MAX_GROUPS,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOLS,
    TensorSpec,
    check_protocol,
    decode_groups,
    decode_message,
    decode_weights,
    encode_chunks,
    encode_message,
    protocol_for,
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


def _decode(payload: bytes | bytearray, **kwargs: Any) -> dict[str, np.ndarray]:
    return decode_weights(decode_message(payload)["weights"], **kwargs)


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


# ---------------------------------------------------------------------------- the message


def test_truncated_message() -> None:
    payload = encode_message({"weights": {"w": np.ones(10, np.float32)}})
    for cut in (1, 4, 20, len(payload) - 1):
        with pytest.raises(MalformedMessage, match="truncated"):
            decode_message(payload[:-cut])


def test_top_level_must_be_a_map() -> None:
    with pytest.raises(MalformedMessage, match="map"):
        decode_message(msgpack.packb([1, 2]))


def test_encode_chunks_are_the_message_with_tensor_data_left_in_place() -> None:
    weights = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int64)}
    message = {"protocol": 1, "weights": weights, "metrics": {"loss": 0.25}}
    chunks = encode_chunks(message)
    assert b"".join(chunks) == encode_message(message)
    views = [c for c in chunks if isinstance(c, memoryview)]
    assert len(views) == 2
    assert all(v.readonly for v in views)
    assert np.shares_memory(np.frombuffer(views[0], np.uint8), weights["a"])


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
