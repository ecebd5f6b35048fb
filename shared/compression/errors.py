"""The errors of compressed tensors: `TensorError`s, so the aggregator answers 422 invalid_tensor.

    TensorError (shared/errors.py)
    └── EncodingError          a compressed tensor map whose fields are missing or
        │                      inconsistent, or a tensor its encoding cannot represent
        └── UnknownEncoding    an encoding name this side does not know

Decoding raises these and shared/errors.py's `SpecMismatch` (dtype or shape differ from
the expected spec), `TensorSizeError` (a bin or count of the wrong length),
`NonFiniteTensor` (a NaN or Inf value, scale or min) and `UnsupportedDtype`; a tensor map
without an encoding is decoded by shared/wire_tensors.py and can also raise
`MalformedMessage`. Encoding raises `UnsupportedDtype`, `NonFiniteTensor` (NaN or Inf,
or values that would round to Inf) and `EncodingError` (values beyond ±2^64 to quantize).
"""

from __future__ import annotations

from shared.errors import TensorError

__all__ = ["EncodingError", "UnknownEncoding"]


class EncodingError(TensorError):
    """A compressed tensor map whose fields are missing, mistyped or inconsistent.

    Also a tensor its encoding cannot represent (values beyond ±2^64 to quantize).
    """


class UnknownEncoding(EncodingError):
    """An encoding name this side does not know."""
