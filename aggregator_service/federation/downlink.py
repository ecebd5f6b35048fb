"""Download compression: the global model as a chain of encoded steps, and delta answers.

With the experiment's `download_compression` section each new global model is defined
as the previous one plus the encoded step between them, v_k = v_{k-1} + decode(Q(new -
v_{k-1})) in the model's dtypes (`DownloadChain.chain`). The aggregator adopts v_k as
its global model (checkpoint, evaluation, the base of delta updates), and a worker that
holds v_{k-1} and adds the step holds v_k bit for bit, as does one that downloads v_k in
full. Every published ETag maps to its version (`note`); the steps of the newest
`keep_versions` versions are kept (with q8 about a quarter of the float32 model each),
and `answer` returns the delta message of a published model against the version a
worker names, or None when that version is unknown, too old or the delta no smaller.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator_service.federation.publish import PublishedModel
from shared.compression import apply_step, step_between
from shared.config import DownloadCompressionConfig
from shared.errors import TensorError
from shared.wire import decode_groups, decode_message, encode_message

__all__ = ["DownloadChain"]

log = logging.getLogger(__name__)

_STREAM = 0xD0A7  # keeps the steps' stochastic rounding apart from other seeded generators


@dataclass
class _Version:
    """One version of the global model as far as downloads go."""

    number: int
    weights: Mapping[str, np.ndarray] | None  # the newest version's only
    step: dict[str, Any] | None  # the encoded step from the version before; None: none


class DownloadChain:
    """The chain's recent versions, their ETags and steps, and the delta answers built."""

    def __init__(self, section: DownloadCompressionConfig, seed: int) -> None:
        self._spec = section.spec()
        self._keep = section.keep_versions
        self._seed = seed
        self._lock = threading.Lock()
        self._versions: deque[_Version] = deque()
        self._etags: dict[str, _Version] = {}
        self._answers: dict[str, bytes | None] = {}  # known base ETag -> answer to `_target`
        self._target = ""  # the ETag of the model `_answers` answer

    def chain(
        self,
        server_round: int,
        previous: Mapping[str, np.ndarray],
        new: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Return previous + the encoded step to `new` (the next global model); keep the step."""
        rng = np.random.default_rng([self._seed, server_round, _STREAM])
        try:
            step: dict[str, Any] | None = step_between(new, previous, self._spec, rng)
        except TensorError as exc:  # NaN or Inf in the new model: no step can carry it
            log.warning(
                "round %d: the new model goes in full to every worker (%s)", server_round, exc
            )
            step = None
        chained = dict(new) if step is None else apply_step(previous, step)
        with self._lock:
            latest = self._versions[-1] if self._versions else None
            linked = latest is not None and latest.weights is previous
            self._push(chained, step if linked else None)
        return chained

    def note(self, published: PublishedModel) -> None:
        """Map a newly published model's ETag to its version (called for every publish)."""
        with self._lock:
            if published.etag in self._etags:
                return
            latest = self._versions[-1] if self._versions else None
            if latest is None or latest.weights is not published.weights:
                latest = self._push(published.weights, None)  # a model from outside the chain
            self._etags[published.etag] = latest

    def answer(self, published: PublishedModel, base: str) -> bytes | None:
        """Return the delta message of `published` against the version `base` names, or None."""
        with self._lock:
            if base not in self._etags:  # not cached: any string may come
                return None
            if self._target != published.etag:
                self._answers, self._target = {}, published.etag
            if base not in self._answers:
                self._answers[base] = self._build(published, base)
            return self._answers[base]

    def _build(self, published: PublishedModel, base: str) -> bytes | None:
        """Encode the steps from `base`'s version to `published`'s; None when it cannot."""
        target, held = self._etags.get(published.etag), self._etags.get(base)
        if target is None or held is None or held.number > target.number:
            return None
        steps = [v.step for v in self._versions if held.number < v.number <= target.number]
        if len(steps) != target.number - held.number or any(s is None for s in steps):
            return None
        message = _fields(published) | {"delta_base": base, "deltas": steps}
        payload = encode_message(message)
        return payload if len(payload) < len(published.payload) else None

    def _push(self, weights: Mapping[str, np.ndarray], step: dict[str, Any] | None) -> _Version:
        """Append a version after the newest; forget the versions beyond `keep_versions`."""
        latest = self._versions[-1] if self._versions else None
        if latest is not None:
            latest.weights = None
        version = _Version(latest.number + 1 if latest else 1, weights, step)
        self._versions.append(version)
        while len(self._versions) > self._keep + 1:
            dropped = self._versions.popleft()
            self._etags = {etag: v for etag, v in self._etags.items() if v is not dropped}
        return version


def _fields(published: PublishedModel) -> dict[str, Any]:
    """Return the published message without its weights (groups decoded, to re-encode)."""
    message = decode_message(published.payload)
    del message["weights"]
    if "groups" in message:
        message["groups"] = decode_groups(message["groups"])
    return message
