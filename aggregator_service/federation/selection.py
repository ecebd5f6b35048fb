"""Client selection: which registered clients train in a round, reproducibly.

A round trains k = max(min_fit_clients, ceil(fraction_fit * n)) of the n available
clients, capped at n. The k clients are drawn without replacement from the sorted ids with
``np.random.default_rng([seed, server_round])``, so the selection depends only on the set
of available ids, the run's seed and the round: never on the order the ids arrive in, and
a different round (generally) draws a different subset.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from shared.errors import ConfigError

__all__ = ["num_fit_clients", "select_clients"]

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


def select_clients(
    available: Collection[str],
    *,
    server_round: int,
    fraction_fit: float,
    min_fit_clients: int,
    seed: int,
) -> list[str]:
    """Return the sorted ids of the clients that train in `server_round`.

    Duplicate ids count once. Fewer than `min_fit_clients` available clients are all
    selected; waiting for more is the caller's decision.
    """
    candidates = sorted(set(available))
    k = num_fit_clients(len(candidates), fraction_fit=fraction_fit, min_fit_clients=min_fit_clients)
    rng = np.random.default_rng([seed, server_round])
    chosen = rng.choice(len(candidates), size=k, replace=False)
    return sorted(candidates[int(i)] for i in chosen)
