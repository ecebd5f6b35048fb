"""The published global model: encoded once per change, swapped atomically, announced.

`publish_round` is the one way a round and its model become what GET /get_weights
serves; `Publications` tells its subscribers (the HTTP layer's long polls and upload
buffers) about each new version.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from aggregator_service.strategy import Groups, Strategy
from shared.config import ExperimentConfig
from shared.schemas import Phase
from shared.wire import TensorSpec, encode_message, protocol_for

__all__ = [
    "Publications",
    "PublishedModel",
    "RoundView",
    "model_digest",
    "publish",
    "publish_round",
]


_versions = itertools.count(1)
_boot: list[str] = []  # this process's ETag prefix, drawn on the first publish
_boot_lock = threading.Lock()


@dataclass(frozen=True)
class PublishedModel:
    """One immutable version of what GET /get_weights serves.

    The ETag names the version (unique per process start and publish), so publishing costs
    one encode; the payload's sha256 and the per-tensor summary for curl are computed on
    first request, off the round loop's critical path.
    """

    server_round: int
    phase: Phase
    model: str
    selected: frozenset[str]
    payload: bytes  # the msgpack body, built once
    etag: str
    weights: Mapping[str, np.ndarray] = field(repr=False)
    selective: bool = False  # async mode: news only to the clients it selects

    def news_to(self, client_id: str | None, etag: str | None) -> bool:
        """Whether a client holding `etag` should get this version (else: 304, keep waiting).

        Any other ETag is news, except in async mode (`selective`): a round is republished
        whenever a slot changes hands, and a client that is not selected has nothing to do
        with the weights; it is answered when it is selected or the run is finished (and
        at once when it holds no version yet).
        """
        if etag == self.etag:
            return False
        if not self.selective or etag is None or client_id is None:
            return True
        return client_id in self.selected or self.phase == "finished"

    @cached_property
    def sha256(self) -> str:
        """The sha256 of the msgpack payload (hex)."""
        return hashlib.sha256(self.payload).hexdigest()

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The readable summary GET /model answers."""
        return {
            "round": self.server_round,
            "phase": self.phase,
            "model": self.model,
            "sha256": self.sha256,
            "payload_bytes": len(self.payload),
            **_tensor_summary(self.weights),
        }


def publish(
    *,
    server_round: int,
    phase: Phase,
    model: str,
    selected: frozenset[str],
    config: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    groups: Groups | None = None,
    selective: bool = False,
) -> PublishedModel:
    """Encode the global model and its round state into a new PublishedModel.

    With tensor `groups` the message is protocol 2 and carries them; otherwise it is
    protocol 1, which every client speaks (docs/protocol.md).
    """
    message: dict[str, Any] = {
        "protocol": protocol_for(groups or {}),
        "round": server_round,
        "phase": phase,
        "model": model,
        "selected": sorted(selected),
        "config": dict(config),
        "weights": weights,
    }
    if groups:
        message["groups"] = groups
    payload = encode_message(message)
    return PublishedModel(
        server_round=server_round,
        phase=phase,
        model=model,
        selected=selected,
        payload=payload,
        etag=f'"{_boot_prefix()}-{next(_versions)}"',
        weights=weights,
        selective=selective,
    )


class RoundView(Protocol):
    """What publishing needs of a round."""

    @property
    def server_round(self) -> int:
        """The round's number."""

    @property
    def phase(self) -> Phase:
        """The round's phase."""

    @property
    def selected(self) -> frozenset[str]:
        """The clients invited to train in it."""

    @property
    def attempt(self) -> int:
        """How many times the round was retried before this attempt."""


def publish_round(
    config: ExperimentConfig,
    strategy: Strategy,
    round_state: RoundView,
    weights: Mapping[str, np.ndarray],
    exchanged: Mapping[str, TensorSpec],
) -> PublishedModel:
    """Encode `round_state` with the global model, the round config and the strategy's groups.

    The round config names the strategy, holds its own entries (`client_config`, e.g. the
    clip norm) and, when it wants tensor groups in every update, lists them as
    `update_groups`. `exchanged` is the spec of the tensors updates carry.
    """
    round_config = config.round_config() | strategy.client_config()
    if "secagg" in round_config:  # the attempt names the keys and masks of this try
        round_config["secagg"] = {**round_config["secagg"], "attempt": round_state.attempt}
    update_groups = sorted(strategy.update_groups(exchanged))
    if update_groups:
        round_config["update_groups"] = update_groups
    return publish(
        server_round=round_state.server_round,
        phase=round_state.phase,
        model=config.model,
        selected=round_state.selected,
        config=round_config,
        weights=weights,
        groups=strategy.published_groups(),
        selective=config.mode == "async",
    )


def model_digest(weights: Mapping[str, np.ndarray]) -> str:
    """Return the sha256 of a model: each tensor's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, array in weights.items():
        head = f"{name}\0{array.dtype.str}\0{list(array.shape)}\0"
        digest.update(head.encode())
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


class Publications:
    """Who wants to know when a new model is published: an explicit list of subscribers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[PublishedModel], None]] = []

    def subscribe(self, subscriber: Callable[[PublishedModel], None]) -> None:
        """Call `subscriber(published)` (on the publishing thread) for every new version."""
        with self._lock:
            self._subscribers.append(subscriber)

    def announce(self, published: PublishedModel) -> None:
        """Tell every subscriber about `published`."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber(published)


def _boot_prefix() -> str:
    """Return a random prefix fixed for this process, so ETags differ across restarts."""
    with _boot_lock:
        if not _boot:
            _boot.append(secrets.token_hex(8))
        return _boot[0]


def _tensor_summary(weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tensors = {
        name: {
            "shape": list(array.shape),
            "dtype": array.dtype.name,
            "l2_norm": _l2(array),
        }
        for name, array in weights.items()
    }
    return {
        "total_parameters": int(sum(a.size for a in weights.values())),
        "total_bytes": int(sum(a.nbytes for a in weights.values())),
        "tensors": tensors,
    }


def _l2(array: np.ndarray) -> float:
    flat = array.reshape(-1).astype(np.float64, copy=False)
    norm = float(math.sqrt(np.dot(flat, flat))) if flat.size else 0.0
    return round(norm, 6)
