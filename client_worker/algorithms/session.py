"""One client's algorithm across rounds: built from the round config, its state on disk.

The instance lives from one accepted update to the next. A round whose update was not
accepted (rejected, interrupted, or failed) drops it, and the next round rebuilds it from
the state saved after the last accepted one, so a state change counts only when the
aggregator took the update it went with, and a restarted worker carries on from there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client_worker.algorithms.base import ClientAlgorithm
from client_worker.algorithms.personal import Personalized
from client_worker.algorithms.registry import algorithm_class
from client_worker.algorithms.state import StateStore
from shared.exchange import personalization

__all__ = ["AlgorithmSession"]

_log = logging.getLogger(__name__)


class AlgorithmSession:
    """The client algorithm of one client, and where its state is kept (None: memory only)."""

    def __init__(self, client_id: str, state_dir: Path | None) -> None:
        self.client_id = client_id
        self.store = StateStore(state_dir, client_id) if state_dir is not None else None
        self.algorithm: ClientAlgorithm | None = None
        self._kind: tuple[type[ClientAlgorithm], tuple[str, ...], bool] | None = None

    def for_round(self, config: Mapping[str, Any]) -> ClientAlgorithm:
        """Return the algorithm the round config names, with its saved state loaded.

        With `local_layers` or `fedbn` in the round config it is wrapped in `Personalized`,
        which keeps this client's own tensors.
        """
        cls = algorithm_class(config)
        local_layers, fedbn = personalization(config)
        kind = (cls, local_layers, fedbn)
        if self._kind != kind or self.algorithm is None:
            algorithm: ClientAlgorithm = cls()
            if local_layers or fedbn:
                algorithm = Personalized(algorithm, local_layers=local_layers, fedbn=fedbn)
            state = self.store.load(algorithm.name) if self.store is not None else {}
            if state:
                algorithm.load_state_dict(state)
                _log.info(
                    "client %s: %s state restored (%d tensors)",
                    self.client_id,
                    algorithm.name,
                    len(state),
                )
            self.algorithm, self._kind = algorithm, kind
        return self.algorithm

    def commit(self) -> None:
        """Save the algorithm's state: the round's update was accepted."""
        if self.algorithm is not None and self.store is not None:
            self.store.save(self.algorithm.name, self.algorithm.state_dict())

    def discard(self) -> None:
        """Forget the round's changes: the next round starts from the saved state."""
        self.algorithm = None
