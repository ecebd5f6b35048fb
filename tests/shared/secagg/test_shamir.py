"""Shamir's scheme: any t of n shares recover the secret; fewer do not; encodings are strict."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.secagg.shamir import PRIME, combine, decode_share, encode_share, split

Sharing = tuple[bytes, int, dict[int, int], list[int]]
secrets_32 = st.binary(min_size=32, max_size=32)


@st.composite
def sharings(draw: st.DrawFn) -> Sharing:
    """A secret, a threshold t, its shares for n holders, and a subset of t of them."""
    secret = draw(secrets_32)
    n = draw(st.integers(1, 12))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n, unique=True))
    shares = split(secret, threshold=t, xs=xs)
    chosen = draw(st.permutations(xs))[:t]
    return secret, t, shares, chosen


@settings(max_examples=60, deadline=None)
@given(sharings())
def test_any_t_shares_recover_the_secret(
    case: Sharing,
) -> None:
    secret, t, shares, chosen = case
    assert combine({x: shares[x] for x in chosen}, threshold=t) == secret
    assert combine(shares, threshold=t) == secret  # more than t: the first t by x


@settings(max_examples=60, deadline=None)
@given(sharings())
def test_fewer_than_t_shares_do_not_recover_it(
    case: Sharing,
) -> None:
    secret, t, shares, chosen = case
    fewer = {x: shares[x] for x in chosen[: t - 1]}
    with pytest.raises(ValueError, match="cannot recover"):
        combine(fewer, threshold=t)
    if t >= 2:  # interpolating t - 1 shares as if the threshold were t - 1 gives another value
        with contextlib.suppress(ValueError):  # ValueError: no 32-byte value at all
            assert combine(fewer, threshold=t - 1) != secret


@settings(max_examples=30, deadline=None)
@given(secrets_32, st.integers(0, (1 << 256) - 1))
def test_t_minus_1_shares_fit_every_secret(secret: bytes, other: int) -> None:
    """Perfect secrecy: for any other secret a polynomial through the same t - 1 shares exists."""
    shares = split(secret, threshold=3, xs=[1, 2, 3])
    # With f(0) = other and f(1), f(2) as dealt, the degree-2 polynomial is unique: f(3) differs
    # from the dealt share exactly when other differs from the secret.
    forged = {0: other, 1: shares[1], 2: shares[2]}
    l0 = (3 - 1) * (3 - 2) * pow((0 - 1) * (0 - 2), -1, PRIME)
    l1 = (3 - 0) * (3 - 2) * pow((1 - 0) * (1 - 2), -1, PRIME)
    l2 = (3 - 0) * (3 - 1) * pow((2 - 0) * (2 - 1), -1, PRIME)
    f3 = (l0 * forged[0] + l1 * forged[1] + l2 * forged[2]) % PRIME
    recovered = combine({1: shares[1], 2: shares[2], 3: f3}, threshold=3)
    assert recovered == other.to_bytes(32, "big")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, PRIME - 1))
def test_share_encoding_round_trips(value: int) -> None:
    encoded = encode_share(value)
    assert len(encoded) == 33
    assert decode_share(encoded) == value


def test_bad_encodings_are_refused() -> None:
    with pytest.raises(ValueError, match="33 bytes"):
        decode_share(bytes(32))
    with pytest.raises(ValueError, match="below the field"):
        decode_share(PRIME.to_bytes(33, "big"))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        split(bytes(31), threshold=1, xs=[1])
    with pytest.raises(ValueError, match="distinct"):
        split(bytes(32), threshold=1, xs=[1, 1])
    with pytest.raises(ValueError, match="threshold"):
        split(bytes(32), threshold=3, xs=[1, 2])
