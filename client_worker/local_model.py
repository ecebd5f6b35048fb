"""The model a client trains: modules shared by a process's clients, loaded each round.

A `ModelPool` builds modules from the round's model name and the process's dataset
(channels, classes, image size), with the layers initialised under a fixed seed so that
building is reproducible, and lends them out: a client holds one from loading the global
weights until its update is posted (the upload streams from the module's memory), then
gives it back for the next client. Every lease starts by copying the round's global
weights into the whole state (parameters and buffers), after their names, shapes and
dtypes are checked, so which module a client gets never changes what it trains.

Virtual clients with `train_slots` k share 2k modules (one training, one posting per
slot; `client_worker.virtual` adds one per slowed-down client) instead of one each: 100
virtual ResNet18 clients on one training slot hold 2 modules (90 MB), not 100 (4.5 GB).
`LocalModel` is one client's view: it picks the round's model name and logs once per key
where the round config disagrees with this worker's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from torch import nn

from client_worker.replies import WeightsReply
from client_worker.slots import SLOT_POLL_S
from client_worker.train import TrainingInterrupted, seeded_global_rng
from shared.data import Dataset
from shared.models import build_model, load_numpy_state, model_spec

__all__ = ["LocalModel", "ModelPool"]

_log = logging.getLogger(__name__)


class ModelPool:
    """Modules lent to the clients of one process: at most `size` exist (None: no bound)."""

    def __init__(self, dataset: Dataset, size: int | None = 1) -> None:
        if size is not None and size < 1:
            raise ValueError(f"a model pool needs room for at least 1 module; got {size}")
        self.dataset = dataset
        self.size = size
        self.built = 0  # modules built so far (a replaced one counts again)
        self._idle: dict[str, list[nn.Module]] = {}
        self._count = 0  # modules that exist: lent out or idle
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def lease(self, name: str, stop: threading.Event | None = None) -> Iterator[nn.Module]:
        """Lend a module of model `name` for the body, building one if none is idle.

        While every module is lent out this waits; a `stop` set meanwhile raises
        `TrainingInterrupted(0)` (nothing was trained).
        """
        module = self._take(name, stop)
        try:
            yield module
        finally:
            with self._changed:
                self._idle.setdefault(name, []).append(module)
                self._changed.notify()

    def _take(self, name: str, stop: threading.Event | None) -> nn.Module:
        with self._changed:
            while True:
                idle = self._idle.get(name)
                if idle:
                    return idle.pop()
                if self.size is None or self._count < self.size:
                    self._count += 1
                    break
                if not self._drop_other_than(name):
                    if stop is not None and stop.is_set():
                        raise TrainingInterrupted(0)
                    self._changed.wait(SLOT_POLL_S)
        try:
            return self._build(name)
        except BaseException:
            with self._changed:
                self._count -= 1
                self._changed.notify()
            raise

    def _drop_other_than(self, name: str) -> bool:
        """Forget one idle module of another model, to make room; tell whether one was."""
        for other, idle in self._idle.items():
            if other != name and idle:
                idle.pop()
                self._count -= 1
                return True
        return False

    def _build(self, name: str) -> nn.Module:
        with seeded_global_rng(0):  # the layer initialisers draw from torch's global RNG
            module = build_model(
                name,
                in_channels=self.dataset.in_channels,
                num_classes=self.dataset.num_classes,
                image_size=self.dataset.image_size,
            )
        self.built += 1
        return module


class LocalModel:
    """One client's model: the round's model name, a module from the pool, its weights."""

    def __init__(
        self,
        client_id: str,
        pool: ModelPool,
        default_name: str,
        expected: Mapping[str, Any] | None = None,
    ) -> None:
        self.client_id = client_id
        self.pool = pool
        self.default_name = default_name
        self.expected = dict(expected or {})  # round config keys this worker's values must match
        self.name = ""
        self.warned: set[str] = set()  # config keys whose mismatch was already logged
        self.global_weights: dict[str, np.ndarray] = {}  # the round's, while a module is lent

    @contextlib.contextmanager
    def loaded(
        self, reply: WeightsReply, stop: threading.Event | None = None
    ) -> Iterator[nn.Module]:
        """Lend the round's model holding the global weights (also in `global_weights`)."""
        self._warn_on_mismatch(reply.config)
        self.name = reply.model or str(reply.config.get("model", self.default_name))
        with self.pool.lease(self.name, stop) as module:
            self.global_weights = reply.weights(model_spec(module))
            try:
                load_numpy_state(module, self.global_weights)
                yield module
            finally:
                self.global_weights = {}

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
