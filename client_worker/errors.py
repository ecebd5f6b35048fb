"""The worker's view of what went wrong with the aggregator, as typed errors."""

from __future__ import annotations

from shared.errors import TributaryError

__all__ = [
    "HINTS",
    "CertificateError",
    "FatalServerError",
    "ServerUnavailableError",
    "StopRequested",
    "UpdateRejected",
]


class FatalServerError(TributaryError):
    """The aggregator refused a request in a way a retry cannot heal."""

    def __init__(self, status: int, detail: str, code: str | None = None, hint: str = "") -> None:
        label = f"{status} {code}" if code else str(status)
        super().__init__(
            f"aggregator answered HTTP {label}: {detail}" + (f"; {hint}" if hint else "")
        )
        self.status = status
        self.detail = detail
        self.code = code


class CertificateError(TributaryError):
    """The aggregator's TLS certificate could not be verified."""


HINTS = {
    401: "check this worker's token (--token-file or TRIBUTARY_WORKER_TOKEN)",
    403: "the token does not allow this request; each client needs its own token",
}


class UpdateRejected(TributaryError):
    """The aggregator declined an update (stale round, or this client was not selected)."""

    def __init__(self, reason: str, current_round: int | None, detail: str = "") -> None:
        super().__init__(f"update rejected ({reason}); server round {current_round}: {detail}")
        self.reason = reason
        self.current_round = current_round


class ServerUnavailableError(TributaryError):
    """Retries went on for longer than the backoff time limit without success."""


class StopRequested(TributaryError):
    """A stop was requested while the client waited to retry."""
