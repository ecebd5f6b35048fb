"""Which client algorithm a round runs: looked up by the round config's "strategy" name.

A strategy that lives only on the server (FedAvgM, FedMedian: they change how updates
are combined, not how a client trains) maps to the plain `ClientAlgorithm`. As before
the registry existed, a round config with "mu" > 0 runs FedProx whatever the strategy,
unless the strategy has a client algorithm of its own. DP-FedAvg's clipping client runs
only when the round config sends a `clip_norm` (clipping: client).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from client_worker.algorithms.base import ClientAlgorithm
from client_worker.algorithms.dp_clipping import ClientClipping
from client_worker.algorithms.fedprox import FedProx
from client_worker.algorithms.scaffold import Scaffold
from shared.errors import ConfigError

__all__ = ["ALGORITHMS", "DEFAULT_STRATEGY", "UnknownAlgorithm", "algorithm_class"]

DEFAULT_STRATEGY = "fedavg"  # when the round config names none

# strategy name (the server's, from the round config) -> the client algorithm it pairs with
ALGORITHMS: Mapping[str, type[ClientAlgorithm]] = {
    "fedavg": ClientAlgorithm,
    "fedavgm": ClientAlgorithm,
    "fedmedian": ClientAlgorithm,
    "fedadagrad": ClientAlgorithm,
    "fedadam": ClientAlgorithm,
    "fedyogi": ClientAlgorithm,
    "fedtrimmedavg": ClientAlgorithm,
    "krum": ClientAlgorithm,
    "fedprox": FedProx,
    "scaffold": Scaffold,
    "dpfedavg": ClientClipping,  # a plain client when the server clips (no clip_norm sent)
}


class UnknownAlgorithm(ConfigError):
    """A strategy name with no client algorithm on this worker."""


def algorithm_class(config: Mapping[str, Any]) -> type[ClientAlgorithm]:
    """Return the client algorithm of a round config (its "strategy", and "mu" > 0)."""
    name = config.get("strategy", DEFAULT_STRATEGY)
    if not isinstance(name, str) or name not in ALGORITHMS:
        raise UnknownAlgorithm(
            f"the round config's strategy {name!r} has no client algorithm on this worker; "
            f"known: {', '.join(sorted(ALGORITHMS))}"
        )
    chosen = ALGORITHMS[name]
    if chosen is ClientClipping and "clip_norm" not in config:
        chosen = ClientAlgorithm  # dpfedavg with clipping: server
    if chosen is ClientAlgorithm and _mu(config) > 0:
        return FedProx
    return chosen


def _mu(config: Mapping[str, Any]) -> float:
    """Return the round config's FedProx weight mu (0 when absent)."""
    value = config.get("mu", 0.0)
    try:
        mu = float(value)
    except (TypeError, ValueError):
        mu = -1.0
    if not mu >= 0:  # also NaN
        raise ConfigError(f"the round config's mu {value!r} is not a number >= 0")
    return mu
