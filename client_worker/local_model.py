"""A client's local copy of the global model: built once per model name, loaded each round.

The architecture comes from the round's model name and this client's dataset (channels,
classes, image size); the layers are initialised under a fixed seed so that building is
reproducible, and every round's global weights are copied into the same module after
their names, shapes and dtypes are checked. A round config whose dataset or number of
partitions differs from this worker's is logged once per key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from client_worker.replies import WeightsReply
from client_worker.train import seeded_global_rng
from shared.data import Dataset
from shared.models import build_model, load_numpy_state, model_spec

__all__ = ["LocalModel"]

_log = logging.getLogger(__name__)


class LocalModel:
    """The module one client trains, reused across rounds while the model name stays."""

    def __init__(
        self,
        client_id: str,
        dataset: Dataset,
        default_name: str,
        expected: Mapping[str, Any] | None = None,
    ) -> None:
        self.client_id = client_id
        self.dataset = dataset
        self.default_name = default_name
        self.expected = dict(expected or {})  # round config keys this worker's values must match
        self.module: nn.Module | None = None
        self.name = ""
        self.warned: set[str] = set()  # config keys whose mismatch was already logged

    def load(self, reply: WeightsReply) -> nn.Module:
        """Return the round's model (built once per name) holding the global weights."""
        self._warn_on_mismatch(reply.config)
        name = reply.model or str(reply.config.get("model", self.default_name))
        if self.module is None or name != self.name:
            with seeded_global_rng(0):  # the layer initialisers draw from torch's global RNG
                self.module = build_model(
                    name,
                    in_channels=self.dataset.in_channels,
                    num_classes=self.dataset.num_classes,
                    image_size=self.dataset.image_size,
                )
            self.name = name
        load_numpy_state(self.module, reply.weights(model_spec(self.module)))
        return self.module

    def _warn_on_mismatch(self, round_config: Mapping[str, Any]) -> None:
        """Log once per key where the round config disagrees with `expected`."""
        for key, value in self.expected.items():
            if key in round_config and round_config[key] != value and key not in self.warned:
                self.warned.add(key)
                _log.warning(
                    "client %s: the server's %s is %r but this worker uses %r",
                    self.client_id,
                    key,
                    round_config[key],
                    value,
                )
