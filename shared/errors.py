"""Every error Tributary raises on purpose, as one hierarchy.

    TributaryError
    ├── WireError                  a message or tensor that cannot be accepted
    │   ├── MalformedMessage       not msgpack, wrong structure or field types     (HTTP 400)
    │   ├── ProtocolVersionError   a protocol version this side does not speak      (HTTP 400)
    │   └── TensorError            one named tensor is invalid                      (HTTP 422)
    │       ├── UnsupportedDtype   dtype name not in the wire's list
    │       ├── TensorSizeError    prod(shape) * itemsize != len(data)
    │       ├── NonFiniteTensor    NaN or Inf in a floating tensor
    │       └── SpecMismatch       names, shapes or dtypes differ from the reference
    ├── ConfigError                an experiment config that cannot be used
    ├── DatasetError               a dataset that cannot be loaded (missing files, bad name)
    └── ModelError                 an unknown model name or a state that does not fit

Messages name the offending tensor, key or file, so that a client's log line alone says
what to fix.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatasetError",
    "MalformedMessage",
    "ModelError",
    "NonFiniteTensor",
    "ProtocolVersionError",
    "SpecMismatch",
    "TensorError",
    "TensorSizeError",
    "TributaryError",
    "UnsupportedDtype",
    "WireError",
]


class TributaryError(Exception):
    """Base of every error Tributary raises on purpose."""


class WireError(TributaryError):
    """A message or tensor on the wire that cannot be accepted."""


class MalformedMessage(WireError):
    """Bytes that are not msgpack, or a message whose structure or field types are wrong."""


class ProtocolVersionError(WireError):
    """A message whose protocol version this side does not speak."""


class TensorError(WireError):
    """One named tensor is invalid; `tensor` holds its name."""

    def __init__(self, tensor: str, problem: str) -> None:
        super().__init__(f"tensor {tensor!r}: {problem}")
        self.tensor = tensor
        self.problem = problem


class UnsupportedDtype(TensorError):
    """A dtype name that is not on the wire's list."""


class TensorSizeError(TensorError):
    """The data length does not equal prod(shape) * itemsize."""


class NonFiniteTensor(TensorError):
    """A floating tensor holding NaN or Inf."""


class SpecMismatch(TensorError):
    """Names, shapes or dtypes that differ from the reference spec."""


class ConfigError(TributaryError):
    """An experiment config that cannot be used."""


class DatasetError(TributaryError):
    """A dataset that cannot be loaded."""


class ModelError(TributaryError):
    """An unknown model name, or a state that does not fit the model."""
