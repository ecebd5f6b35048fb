"""Client selection: which registered clients train in a round, reproducibly.

A round trains k = max(min_fit_clients, ceil(fraction_fit * n)) of the n available
clients, capped at n. The k clients are drawn without replacement from the sorted ids with
``np.random.default_rng([seed, server_round])``, so the selection depends only on the set
of available ids, the run's seed and the round: never on the order the ids arrive in, and
a different round (generally) draws a different subset.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from shared.fit_clients import num_fit_clients

__all__ = ["num_fit_clients", "select_clients"]


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
