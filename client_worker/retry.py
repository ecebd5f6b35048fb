"""Retrying: exponential backoff with full jitter, and what a response says about retrying."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import httpx
import numpy as np

__all__ = ["RETRYABLE", "Backoff", "retry_after", "retryable"]

RETRYABLE = frozenset({408, 429})  # plus every 5xx


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter and an overall time limit."""

    base_s: float = 0.5
    cap_s: float = 30.0
    max_time_s: float = 600.0

    def bound(self, attempt: int) -> float:
        """Return the largest delay of retry number `attempt` (0-based)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 64))

    def delay(self, attempt: int, rng: np.random.Generator) -> float:
        """Draw the delay of retry `attempt`: uniform(0, bound(attempt)) (full jitter)."""
        return float(rng.uniform(0.0, self.bound(attempt)))


def retryable(status: int) -> bool:
    """Tell whether a status is worth retrying (408, 429 and every 5xx)."""
    return status >= 500 or status in RETRYABLE


def retry_after(response: httpx.Response) -> float | None:
    """Return the Retry-After header in seconds (delta or HTTP date), if present."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
