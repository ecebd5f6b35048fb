"""Reading the aggregator's answers: the global model reply and typed errors.

A 200 of GET /get_weights (protocol 1, or 2 with tensor groups) becomes a `WeightsReply`
whose tensors stay raw until `weights(spec)` and `groups()` check and decode them. An
error answer is read tolerantly (any body) and raised as the error the worker acts on:
`UpdateRejected` for a 409 that only drops this round's update, `FatalServerError` for a
4xx that a retry cannot heal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from client_worker.errors import HINTS, FatalServerError, UpdateRejected
from shared.compression import apply_step
from shared.errors import MalformedMessage, SpecMismatch
from shared.wire import TensorSpec, check_protocol, decode_groups, decode_message, spec_of
from shared.wire import decode_weights as _decode_weights

__all__ = [
    "NotModified",
    "WeightsReply",
    "error_fields",
    "json_object",
    "not_modified",
    "raise_for_status",
    "weights_reply",
]

_REJECTIONS = frozenset(
    {"stale_round", "not_selected", "round_closed", "too_stale"}
    | {"stale_attempt", "wrong_stage", "not_participant", "not_survivor", "already_posted"}
)


@dataclass(frozen=True)
class WeightsReply:
    """A 200 answer of GET /get_weights; tensors stay raw until `weights(spec)`."""

    server_round: int
    phase: str  # "waiting" | "training" | "finished"
    model: str
    selected: tuple[str, ...]
    config: dict[str, Any]
    raw_weights: Any
    etag: str | None
    is_selected: bool
    nbytes: int
    protocol: int = 1
    raw_groups: Any = None  # protocol 2: group name -> raw tensors; None: no groups
    delta_base: str | None = None  # download compression: the ETag the steps start from
    raw_deltas: Any = None  # the steps, raw, when `delta_base` is set
    resolved: Mapping[str, np.ndarray] | None = None  # the model they lead to (`resolve`)

    def weights(self, spec: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
        """Decode the global weights, checking names, shapes and dtypes against `spec`."""
        if self.delta_base is None:
            return _decode_weights(self.raw_weights, spec=spec)
        return _checked(self.full_weights(), spec)

    def full_weights(self) -> dict[str, np.ndarray]:
        """Return the global weights: decoded as sent, or the model the steps lead to."""
        if self.delta_base is None:
            return _decode_weights(self.raw_weights)
        if self.resolved is None:
            raise MalformedMessage(f"steps from {self.delta_base} not resolved onto its model")
        return dict(self.resolved)

    def resolve(self, held: Mapping[str, np.ndarray]) -> WeightsReply:
        """Return this reply with its steps added to `held`, the model of `delta_base`."""
        if not isinstance(self.raw_deltas, list):
            raise MalformedMessage("GET /get_weights: 'deltas' must be a list of steps")
        weights = dict(held)
        for step in self.raw_deltas:
            weights = apply_step(weights, step)
        return dataclasses.replace(self, resolved=weights)

    def groups(self) -> dict[str, dict[str, np.ndarray]]:
        """Decode the tensor groups the aggregator published (empty under protocol 1)."""
        return decode_groups(self.raw_groups)


@dataclass(frozen=True)
class NotModified:
    """A 304 answer of GET /get_weights: the caller's ETag is current; what its headers say."""

    etag: str | None
    is_selected: bool | None  # X-Tributary-Selected, when the server sent it


def not_modified(response: httpx.Response) -> NotModified:
    """Read a 304 answer of GET /get_weights."""
    return NotModified(etag=response.headers.get("ETag"), is_selected=_selected(response))


def _selected(response: httpx.Response) -> bool | None:
    """Return the X-Tributary-Selected header as a bool; None when it is absent."""
    header = response.headers.get("X-Tributary-Selected")
    return header.lower() == "true" if header is not None else None


def error_fields(response: httpx.Response) -> tuple[str | None, str, dict[str, Any]]:
    """Return (error code, detail, body) of an error response; tolerant of any body."""
    if response.status_code < 400:
        return None, "", {}
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:200], {}
    if not isinstance(body, dict):
        return None, str(body)[:200], {}
    code = body.get("error")
    detail = body.get("detail", "")
    return (str(code) if code is not None else None), str(detail), body


def raise_for_status(response: httpx.Response) -> None:
    """Raise the typed error of a non-retryable 4xx; pass 2xx and 304."""
    status = response.status_code
    if status < 400:
        return
    code, detail, body = error_fields(response)
    if status == 409 and code in _REJECTIONS:
        current = body.get("round")
        raise UpdateRejected(code, current if isinstance(current, int) else None, detail)
    raise FatalServerError(status, detail or response.reason_phrase, code, HINTS.get(status, ""))


def json_object(response: httpx.Response) -> dict[str, Any]:
    """Return the JSON object of a response; anything else is a `FatalServerError`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise FatalServerError(
            response.status_code, f"expected a JSON object, got {response.text[:100]!r}"
        )
    return body


def weights_reply(response: httpx.Response, body: memoryview, client_id: str) -> WeightsReply:
    """Decode a 200 msgpack answer of GET /get_weights (tensors stay views of `body`)."""
    message = decode_message(body)
    protocol = check_protocol(message)
    for key in ("round", "phase"):
        if key not in message:
            raise MalformedMessage(f"GET /get_weights answer lacks the field {key!r}")
    selected = tuple(str(c) for c in message.get("selected") or ())
    is_selected = _selected(response)
    config = message.get("config") or {}
    return WeightsReply(
        server_round=int(message["round"]),
        phase=str(message["phase"]),
        model=str(message.get("model", config.get("model", ""))),
        selected=selected,
        config=dict(config),
        raw_weights=message.get("weights"),
        etag=response.headers.get("ETag"),
        is_selected=client_id in selected if is_selected is None else is_selected,
        nbytes=len(body),
        protocol=protocol,
        raw_groups=message.get("groups"),
        delta_base=_delta_base(message),
        raw_deltas=message.get("deltas"),
    )


def _delta_base(message: Mapping[str, Any]) -> str | None:
    """Return a delta answer's base ETag; None for full weights."""
    base = message.get("delta_base")
    if base is not None and not isinstance(base, str):
        raise MalformedMessage(f"GET /get_weights: 'delta_base' must be a string, got {base!r:.80}")
    return base


def _checked(
    weights: dict[str, np.ndarray], spec: Mapping[str, TensorSpec]
) -> dict[str, np.ndarray]:
    """Return `weights` once their names, shapes and dtypes are exactly `spec`'s."""
    held = spec_of(weights)
    for name in held.keys() | spec.keys():
        if held.get(name) != spec.get(name):
            raise SpecMismatch(name, f"is {held.get(name)} in the model, {spec.get(name)} expected")
    return weights
