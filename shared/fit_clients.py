"""How many clients a round trains: the one rule selection and privacy accounting share."""

from __future__ import annotations

import math

from shared.errors import ConfigError

__all__ = ["num_fit_clients"]

# fraction_fit * n may land a hair above an integer (0.7 * 10 == 7.000000000000001);
# that rounding must not add a client.
_ROUNDING_SLACK = 1e-9


def num_fit_clients(num_available: int, *, fraction_fit: float, min_fit_clients: int) -> int:
    """Return how many of `num_available` clients a round trains."""
    if not 0.0 < fraction_fit <= 1.0:
        raise ConfigError(f"fraction_fit must be in (0, 1], got {fraction_fit}")
    if min_fit_clients < 1:
        raise ConfigError(f"min_fit_clients must be at least 1, got {min_fit_clients}")
    wanted = max(min_fit_clients, math.ceil(fraction_fit * num_available - _ROUNDING_SLACK))
    return min(wanted, num_available)
