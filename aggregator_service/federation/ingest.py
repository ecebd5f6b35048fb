"""Taking in one client update: decode, check, persist, accumulate (runs off the event loop)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError

from aggregator_service.federation.state import FederationState
from aggregator_service.store.journal_stream import StreamedBody
from aggregator_service.store.run_store import RunStore
from aggregator_service.strategy.fedavg import Strategy
from shared.errors import InvalidUpdate
from shared.schemas import ReceiveReply, UpdateHeader
from shared.wire import check_protocol, decode_message, decode_weights

__all__ = ["decode_update", "ingest_update"]


def decode_update(
    body: bytes | bytearray | memoryview,
) -> tuple[UpdateHeader, Mapping[str, Any]]:
    """Parse a POST /receive body into its header fields and its raw weights map."""
    message = decode_message(body)
    check_protocol(message)
    try:
        header = UpdateHeader.model_validate(message)
    except ValidationError as exc:
        raise InvalidUpdate("invalid_update", _describe(exc)) from None
    return header, header.weights


def ingest_update(
    body: bytes | bytearray | memoryview,
    *,
    state: FederationState,
    strategy: Strategy,
    store: RunStore | None,
    authorize: Callable[[UpdateHeader], None] | None = None,
    streamed: StreamedBody | None = None,
) -> ReceiveReply:
    """Accept one update into the current round, or raise why not; state changes only on success.

    `authorize` sees the decoded header first and raises to refuse the sender; `streamed`
    is what the store wrote of the body while it arrived (journal_stream.py).
    """
    header, raw_weights = decode_update(body)
    if authorize is not None:
        authorize(header)
    duplicate = state.reserve(header)
    if duplicate is not None:
        return duplicate
    try:
        weights = decode_weights(raw_weights, spec=state.spec)
        if store is not None:
            store.save_update(header.round, header.client_id, header.num_examples, body, streamed)
        strategy.accumulate(weights, header.num_examples)
    except BaseException:
        state.release(header.client_id)
        raise
    return state.commit(header, len(body))


def fold_update(
    body: bytes, *, state: FederationState, strategy: Strategy
) -> tuple[UpdateHeader, dict[str, np.ndarray]]:
    """Decode a persisted update and fold it into the strategy (used after a restart)."""
    header, raw_weights = decode_update(body)
    weights = decode_weights(raw_weights, spec=state.spec)
    strategy.accumulate(weights, header.num_examples)
    return header, weights


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{key}: {err['msg']}")
    return "invalid update fields: " + "; ".join(parts)
