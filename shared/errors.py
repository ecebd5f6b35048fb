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
    ├── Refused                    a request refused for a reason the client can act on
    │   ├── BadRequest             a request that is wrong as sent                  (HTTP 400)
    │   ├── Unauthorized           no or an unknown bearer token                    (HTTP 401)
    │   ├── Forbidden              a token not allowed to do this                   (HTTP 403)
    │   ├── Conflict               not now: stale round, round closed, ...          (HTTP 409)
    │   ├── RequestTimeout         a body that stalled or arrived too slowly        (HTTP 408)
    │   ├── PayloadTooLarge        a body over the size limit                       (HTTP 413)
    │   ├── UnsupportedMediaType   a body of the wrong content type                 (HTTP 415)
    │   ├── InvalidUpdate          an update whose fields cannot be accepted        (HTTP 422)
    │   ├── RateLimited            too many requests from this client               (HTTP 429)
    │   └── Unavailable            the aggregator cannot take it now: retry later   (HTTP 503)
    ├── StoreError                 run state that cannot be written or read         (HTTP 503)
    ├── AggregationError           a strategy used out of order (strategy/fedavg.py)
    ├── SecAggError                a secure-aggregation round whose sum cannot be rebuilt
    ├── ConfigError                an experiment config that cannot be used
    ├── DatasetError               a dataset that cannot be loaded (missing files, bad name)
    └── ModelError                 an unknown model name or a state that does not fit

Messages name the offending tensor, key or file, so that a client's log line alone says
what to fix. A `Refused` carries the machine-readable `code` and the `detail` sentence of
the client's error body; the HTTP status of each class is in aggregator_service/api/errors.py.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "DatasetError",
    "Forbidden",
    "InvalidUpdate",
    "MalformedMessage",
    "ModelError",
    "NonFiniteTensor",
    "PayloadTooLarge",
    "ProtocolVersionError",
    "RateLimited",
    "Refused",
    "RequestTimeout",
    "SecAggError",
    "SpecMismatch",
    "StoreError",
    "TensorError",
    "TensorSizeError",
    "TributaryError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedDtype",
    "UnsupportedMediaType",
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


class Refused(TributaryError):
    """A request refused for a reason the client can act on.

    `code` is machine-readable, `detail` a sentence; `retry_after` (seconds) says when to
    try again, and `extra` adds JSON fields to the error body (e.g. `round`).
    """

    default_retry_after: ClassVar[int | None] = None

    def __init__(
        self, code: str, detail: str, *, retry_after: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after
        self.extra = extra


class BadRequest(Refused):
    """A request that is wrong as sent (a Content-Length that is not a number or lies)."""


class Unauthorized(Refused):
    """No bearer token, or one nobody holds; `challenge` is the WWW-Authenticate value."""

    def __init__(self, code: str, detail: str, *, challenge: str, **extra: Any) -> None:
        super().__init__(code, detail, **extra)
        self.challenge = challenge


class Forbidden(Refused):
    """A valid token that may not do this (another client's id, not the admin)."""


class Conflict(Refused):
    """Not in the federation's current state: stale round, round closed, not selected..."""


class RequestTimeout(Refused):
    """A body that stalled or arrived too slowly."""


class PayloadTooLarge(Refused):
    """A body over the size limit."""


class UnsupportedMediaType(Refused):
    """A body of a content type the endpoint does not take."""


class InvalidUpdate(Refused):
    """An update whose header fields cannot be accepted."""


class RateLimited(Refused):
    """Too many requests from this client; retry after `retry_after` seconds."""


class Unavailable(Refused):
    """The aggregator cannot take this now (busy, update in progress, loop stopped)."""

    default_retry_after = 1


class StoreError(TributaryError):
    """Run state that cannot be written or read (directory, database or file)."""


class SecAggError(TributaryError):
    """A secure-aggregation round whose sum cannot be rebuilt (too few or inconsistent shares)."""


class ConfigError(TributaryError):
    """An experiment config that cannot be used."""


class DatasetError(TributaryError):
    """A dataset that cannot be loaded."""


class ModelError(TributaryError):
    """An unknown model name, or a state that does not fit the model."""
