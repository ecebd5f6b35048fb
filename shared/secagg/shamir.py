"""Shamir's secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

`split` draws a random polynomial f of degree t - 1 with f(0) = the secret (read as a
big-endian integer) and returns f(x) for each holder's x (1-based positions). `combine`
interpolates f(0) from the first t shares by x, with Lagrange coefficients cached per set
of x. Fewer than t shares say nothing about the secret: every value is equally likely.
A share travels as 33 big-endian bytes.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping, Sequence

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "combine",
    "decode_share",
    "encode_share",
    "split",
]

PRIME = 2**256 + 297  # the least prime above 2^256: every 32-byte secret is a field element
SECRET_BYTES = 32
SHARE_BYTES = 33


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Return the share f(x) of `secret` for each x in `xs`; any `threshold` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}] (the holders)")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in xs}


def combine(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """Return the secret from at least `threshold` shares {x: f(x)}; the first t by x are used."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares cannot recover a secret of threshold {threshold}")
    xs = tuple(sorted(shares)[:threshold])
    _check_xs(xs)
    value = sum(c * shares[x] for c, x in zip(_lagrange_at_zero(xs), xs, strict=True)) % PRIME
    if value >= 1 << (8 * SECRET_BYTES):
        raise ValueError("the shares are inconsistent: they interpolate to no 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")


def encode_share(value: int) -> bytes:
    """Return a share as 33 big-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """Return the share that 33 big-endian bytes hold; refuse other lengths or values >= PRIME."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("a share must be below the field's prime 2^256 + 297")
    return value


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's rule modulo the prime."""
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share positions must be distinct and in [1, PRIME - 1]")


@functools.lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Return l_j(0) = prod_{m != j} x_m / (x_m - x_j) for each x_j, modulo the prime."""
    coefficients = []
    for j, xj in enumerate(xs):
        numerator = denominator = 1
        for m, xm in enumerate(xs):
            if m != j:
                numerator = numerator * xm % PRIME
                denominator = denominator * (xm - xj) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)
