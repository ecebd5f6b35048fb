"""The strict msgpack reader: agreement with msgpack-python, strictness, zero-copy bins."""

from __future__ import annotations

import contextlib
import struct
from typing import Any, Literal

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.errors import MalformedMessage
from shared.msgpack_reader import MAX_DEPTH, unpack


def _objects(float_width: Literal[32, 64]) -> st.SearchStrategy[Any]:
    """Nested msgpack-able objects whose floats fit in `float_width` bits."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(width=float_width)
        | st.text()
        | st.binary()
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=8), children, max_size=5)
        ),
        max_leaves=30,
    )


SAMPLE = msgpack.packb(
    {
        "protocol": 1,
        "client_id": "client-" + "x" * 40,  # str8
        "numbers": [1, 2**40, -5, -(2**63), 2**64 - 1, 1.5, None, True, False],
        "data": bytes(range(256)) * 2,  # bin16
        "nested": {"a": {"b": [], "c": {}}},
    },
    use_bin_type=True,
)


def _same(ours: Any, ref: Any) -> bool:
    """Tell whether our decoding equals msgpack's: same types, bins as bytes, floats by bits."""
    if isinstance(ref, bytes):
        return isinstance(ours, memoryview) and bytes(ours) == ref
    if type(ours) is not type(ref):
        return False
    if isinstance(ref, float):
        return struct.pack(">d", ours) == struct.pack(">d", ref)
    if isinstance(ref, list):
        return len(ours) == len(ref) and all(map(_same, ours, ref))
    if isinstance(ref, dict):
        return list(ours) == list(ref) and all(_same(ours[key], ref[key]) for key in ref)
    return bool(ours == ref)


def _depth(obj: Any) -> int:
    if isinstance(obj, list):
        return 1 + max(map(_depth, obj), default=0)
    if isinstance(obj, dict):
        return 1 + max(map(_depth, obj.values()), default=0)
    return 0


@settings(deadline=None)
@given(obj=_objects(64))
def test_agrees_with_msgpack(obj: Any) -> None:
    assume(_depth(obj) <= MAX_DEPTH)
    data = msgpack.packb(obj, use_bin_type=True)
    assert _same(unpack(data), msgpack.unpackb(data, raw=False))


@settings(deadline=None)
@given(obj=_objects(32))
def test_agrees_with_msgpack_single_floats(obj: Any) -> None:
    assume(_depth(obj) <= MAX_DEPTH)
    data = msgpack.packb(obj, use_bin_type=True, use_single_float=True)
    assert _same(unpack(data), msgpack.unpackb(data, raw=False))


def test_int_keys_are_accepted() -> None:
    assert unpack(b"\x82\x01\xa1a\xff\xa1b") == {1: "a", -1: "b"}


def test_every_truncation_is_malformed() -> None:
    assert len(SAMPLE) > 600
    for size in range(len(SAMPLE)):
        with pytest.raises(MalformedMessage):
            unpack(SAMPLE[:size])


def test_trailing_bytes() -> None:
    with pytest.raises(MalformedMessage, match="1 trailing bytes"):
        unpack(SAMPLE + b"\xc0")


# (ext payload size, the type byte msgpack's spec assigns to it)
EXT_CODES = [(1, 0xD4), (2, 0xD5), (4, 0xD6), (8, 0xD7), (16, 0xD8)]
EXT_CODES += [(3, 0xC7), (300, 0xC8), (70_000, 0xC9)]


@pytest.mark.parametrize(("size", "code"), EXT_CODES)
def test_ext_types_are_refused(size: int, code: int) -> None:
    data = msgpack.packb({"x": msgpack.ExtType(5, b"e" * size)})
    assert data[3] == code
    with pytest.raises(MalformedMessage, match=f"0x{code:02x}"):
        unpack(data)


def test_never_used_type_byte() -> None:
    with pytest.raises(MalformedMessage, match="0xc1"):
        unpack(b"\xc1")


def test_nesting_up_to_max_depth() -> None:
    # MAX_DEPTH one-element arrays around a nil, built by hand.
    data = b"\x91" * MAX_DEPTH + b"\xc0"
    obj = unpack(data)
    for _ in range(MAX_DEPTH):
        assert isinstance(obj, list)
        (obj,) = obj
    assert obj is None


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000])
def test_nesting_beyond_max_depth(depth: int) -> None:
    with pytest.raises(MalformedMessage, match="nested deeper"):
        unpack(b"\x91" * depth + b"\xc0")
    with pytest.raises(MalformedMessage, match="nested deeper"):
        unpack(b"\x81\xa1k" * depth + b"\xc0")


@pytest.mark.parametrize(
    "data",
    [
        b"\xde\xff\xff" + b"\xc0" * 10,  # map16 of 65535 pairs
        b"\xde\x00\x06" + b"\xc0" * 11,  # map16 of 6 pairs needs 12 objects
        b"\xdd\xff\xff\xff\xff" + b"\xc0" * 10,  # array32 of 4 billion items
        b"\xdf\x7f\xff\xff\xff",  # map32, nothing after it
        b"\xdc\x00\x03\xc0\xc0",  # array16 of 3 items, 2 present
    ],
)
def test_container_larger_than_the_bytes_left(data: bytes) -> None:
    with pytest.raises(MalformedMessage, match="declares"):
        unpack(data)


@pytest.mark.parametrize("key", [True, False, None, 1.5, b"bin", (1, 2)])
def test_non_str_map_keys(key: Any) -> None:
    data = msgpack.packb({key: 1}, use_bin_type=True)
    with pytest.raises(MalformedMessage, match="map key"):
        unpack(data)


def test_duplicate_keys() -> None:
    # {"a": 1, "a": 2}: fixmap of 2, fixstr "a", 1, fixstr "a", 2.
    with pytest.raises(MalformedMessage, match="duplicate map key 'a'"):
        unpack(b"\x82\xa1a\x01\xa1a\x02")


@pytest.mark.parametrize("data", [b"\xa2\xff\xfe", b"\x81\xa1\x80\x01", b"\xd9\x02\xc3\x28"])
def test_invalid_utf8(data: bytes) -> None:
    with pytest.raises(MalformedMessage, match="UTF-8"):
        unpack(data)


@settings(deadline=None, max_examples=300)
@given(data=st.binary(max_size=64))
def test_random_bytes_raise_only_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        unpack(data)


@settings(deadline=None, max_examples=300)
@given(index=st.integers(0, len(SAMPLE) - 1), byte=st.integers(0, 255))
def test_corrupted_sample_raises_only_malformed(index: int, byte: int) -> None:
    data = bytearray(SAMPLE)
    data[index] = byte
    with contextlib.suppress(MalformedMessage):
        unpack(data)


def test_bin_is_a_view_into_the_input() -> None:
    buffer = bytearray(msgpack.packb({"data": b"abc"}, use_bin_type=True))
    obj = unpack(buffer)
    view = obj["data"]
    assert isinstance(view, memoryview)
    assert view.obj is buffer
    buffer[-1] = ord("z")
    assert bytes(view) == b"abz"


def test_bytes_input_gives_read_only_bins() -> None:
    obj = unpack(msgpack.packb({"data": b"abc"}, use_bin_type=True))
    assert obj["data"].readonly


def test_strided_memoryview_input() -> None:
    data = msgpack.packb({"data": b"abc", "n": [1, 2]}, use_bin_type=True)
    doubled = bytes(b for byte in data for b in (byte, 0))
    strided = memoryview(doubled)[::2]
    assert not strided.c_contiguous
    obj = unpack(strided)
    assert bytes(obj["data"]) == b"abc"
    assert obj["n"] == [1, 2]
