"""A client's update as encoded deltas, when the round config announces compression.

Each floating tensor goes as trained - global (the round's global weights), float32 ones
encoded as the announced section says (shared/compression); integer and bool tensors go
as their values. With error feedback the client adds its residual to each delta before
encoding and keeps what the encoding dropped; the residuals live in
``<state_dir>/<client_id>/error_feedback.npz`` and are saved only once the aggregator
took the update (`commit`), so a rejected update leaves them as they were and a restarted
worker carries on from the last accepted one. Stochastic rounding draws from a generator
seeded with (experiment seed, round, client index): reruns send the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shared.compression import ErrorFeedback, encode_update
from shared.config import CompressionConfig

__all__ = ["FEEDBACK_FILE", "UpdateEncoder", "deltas_of"]

_log = logging.getLogger(__name__)

FEEDBACK_FILE = "error_feedback.npz"
_STREAM = 0xC0DEC  # keeps this generator apart from the others seeded with the same numbers


def deltas_of(
    weights: Mapping[str, np.ndarray], global_weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Return trained - global of each floating tensor, in its dtype; the others unchanged."""
    return {
        name: np.subtract(array, global_weights[name], dtype=array.dtype)
        if np.issubdtype(array.dtype, np.floating)
        else array
        for name, array in weights.items()
    }


class UpdateEncoder:
    """One client's encoding of its updates, and its error-feedback residuals."""

    def __init__(self, client_id: str, state_dir: Path | None) -> None:
        self.client_id = client_id
        self.path = state_dir / client_id / FEEDBACK_FILE if state_dir is not None else None
        self.feedback: ErrorFeedback | None = None  # as of the last accepted update
        self._pending: ErrorFeedback | None = None  # this round's, until it is accepted

    def encode(
        self,
        round_config: Mapping[str, Any],
        weights: Mapping[str, np.ndarray],
        global_weights: Mapping[str, np.ndarray],
        *,
        seed: int,
        server_round: int,
        client_index: int,
    ) -> dict[str, Any] | None:
        """Return the update's tensors as encoded deltas; None when the round takes weights."""
        section = CompressionConfig.from_round_config(round_config)
        if section is None:
            return None
        spec = section.spec()
        deltas = deltas_of(weights, global_weights)
        rng = np.random.default_rng([seed, server_round, client_index, _STREAM])
        if not section.uses_error_feedback():
            return encode_update(deltas, spec, rng)
        feedback = ErrorFeedback(self._residuals(deltas))
        encoded = feedback.encode_update(deltas, spec, rng)
        self._pending = feedback
        return encoded

    def commit(self) -> None:
        """Keep this round's residuals (saved to the state dir): its update was accepted."""
        if self._pending is None:
            return
        self.feedback, self._pending = self._pending, None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.feedback.save(self.path)

    def discard(self) -> None:
        """Forget this round's residuals: the next round starts from the kept ones."""
        self._pending = None

    def _residuals(self, deltas: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return a copy of the kept residuals that fit `deltas` (loaded on first use)."""
        if self.feedback is None:
            self.feedback = self._load()
        kept: dict[str, np.ndarray] = {}
        for name, residual in self.feedback.residuals.items():
            if name in deltas and residual.shape == deltas[name].shape:
                kept[name] = residual.copy()
            else:
                _log.warning(
                    "client %s: residual %r no longer fits the model; starting it afresh",
                    self.client_id,
                    name,
                )
        return kept

    def _load(self) -> ErrorFeedback:
        if self.path is None or not self.path.exists():
            return ErrorFeedback()
        feedback = ErrorFeedback.load(self.path)
        _log.info(
            "client %s: error-feedback residuals restored (%d tensors)",
            self.client_id,
            len(feedback.residuals),
        )
        return feedback
