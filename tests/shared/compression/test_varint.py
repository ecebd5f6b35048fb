"""Unsigned LEB128 varints: bytes by hand, round trips, and every malformed form refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.compression.errors import EncodingError
from shared.compression.varint import decode_uvarints, encode_uvarints, varint_length


def _decode(data: bytes, count: int, max_bytes: int = 9) -> list[int]:
    values: list[int] = decode_uvarints(
        "w", np.frombuffer(data, np.uint8), count, max_bytes
    ).tolist()
    return values


@pytest.mark.parametrize(
    ("value", "hex_bytes"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16384, "808001")],
)
def test_by_hand(value: int, hex_bytes: str) -> None:
    assert encode_uvarints(np.array([value], np.uint64)).hex() == hex_bytes
    assert _decode(bytes.fromhex(hex_bytes), 1) == [value]
    assert varint_length(value) == len(hex_bytes) // 2


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(0, 2**63 - 1), max_size=200))
def test_round_trip(values: list[int]) -> None:
    data = encode_uvarints(np.array(values, np.uint64))
    assert len(data) == sum(varint_length(v) for v in values)
    assert _decode(data, len(values)) == values


@pytest.mark.parametrize(
    ("hex_bytes", "count", "problem"),
    [
        ("0180", 2, "truncated"),
        ("01", 2, "are not"),
        ("010203", 2, "hold 3 varints"),
        ("8000", 1, "shortest form"),
        ("ff7f", 2, "hold 1 varints"),
        ("ffffff7f00", 2, "longer than 3 bytes"),
        ("", 1, "are not"),
        ("00", 0, "are not"),
    ],
)
def test_malformed(hex_bytes: str, count: int, problem: str) -> None:
    with pytest.raises(EncodingError, match=problem):
        _decode(bytes.fromhex(hex_bytes), count, max_bytes=3)
