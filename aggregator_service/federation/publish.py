"""The published global model: encoded once per change, swapped atomically, long-polled."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from shared.schemas import Phase
from shared.wire import PROTOCOL_VERSION, encode_message

__all__ = ["ModelWatch", "PublishedModel", "publish"]


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
) -> PublishedModel:
    """Encode the global model and its round state into a new PublishedModel."""
    payload = encode_message(
        {
            "protocol": PROTOCOL_VERSION,
            "round": server_round,
            "phase": phase,
            "model": model,
            "selected": sorted(selected),
            "config": dict(config),
            "weights": weights,
        }
    )
    return PublishedModel(
        server_round=server_round,
        phase=phase,
        model=model,
        selected=selected,
        payload=payload,
        etag=f'"{_boot_prefix()}-{next(_versions)}"',
        weights=weights,
    )


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


class ModelWatch:
    """Wakes long-polling requests (on the event loop) when a new model is published."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Signal a change; safe to call from any thread."""
        self._loop.call_soon_threadsafe(self._fire)

    def current(self) -> asyncio.Event:
        """Return the event the next change will set (take it before checking the model)."""
        return self._event

    def _fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
