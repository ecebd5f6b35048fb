"""Taking in one client update: decode, check, journal (runs off the event loop).

An update is checked here, once: its header fields (pydantic), the sender against its
token's client id, its round and slot (the state), and its tensors against the model's
names, shapes and dtypes (the wire codec; for a delta update, deltas.py and the
compression codec). It is then written to the round's journal and acknowledged; nothing
is folded yet. When the round closes, the round loop reads the
journal in client-id order (`round_updates`), so the aggregate does not depend on the
order in which uploads arrived.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from aggregator_service.federation.deltas import RebuiltWeights, check_deltas
from aggregator_service.federation.state import FederationState
from aggregator_service.store.journal_stream import StreamedBody
from aggregator_service.store.run_store import RunStore
from aggregator_service.strategy import ClientUpdate, Strategy
from shared.errors import Forbidden, InvalidUpdate
from shared.schemas import ReceiveReply, UpdateHeader
from shared.wire import (
    TensorSpec,
    check_protocol,
    decode_groups,
    decode_message,
    decode_weights,
    spec_of,
)

__all__ = ["decode_update", "ingest_update", "round_updates"]


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
    store: RunStore,
    durable: bool,
    sender: str | None = None,
    streamed: StreamedBody | None = None,
    strategy: Strategy | None = None,
    arrived: float | None = None,
) -> ReceiveReply:
    """Accept one update into the current round, or raise why not; state changes only on success.

    `sender` is the client id of the caller's token (None without authentication): the
    update must be that client's. `streamed` is what the store wrote of the body while it
    arrived (journal_stream.py); `durable` fsyncs the update before the reply. `strategy`
    checks what only the rule can (DP-FedAvg's client-clipped norm), against the model the
    round trains. `arrived` (monotonic) is when its body began to be read, for `upload_s`.
    """
    header, raw_weights = decode_update(body)
    if sender is not None and header.client_id != sender:
        raise Forbidden(
            "wrong_client", f"the bearer token does not belong to client_id {header.client_id!r}"
        )
    with state.claim(header, len(body), arrived=arrived) as claim:
        if claim.duplicate:
            return claim.answer
        if header.delta:  # names, shapes, dtypes, encodings, finite values
            claim.raw_nbytes = len(body) + _check_deltas(raw_weights, state)
        else:
            decode_weights(raw_weights, spec=state.spec)  # names, shapes, dtypes, finite values
        groups = decode_groups(_expected_groups(header, state.group_specs), spec=state.group_specs)
        if strategy is not None:
            with state.lock:
                model = state.global_weights
            current = {name: model[name] for name in state.spec}
            weights: Mapping[str, Any] = (
                RebuiltWeights(raw_weights, state.spec, current)
                if header.delta
                else decode_weights(raw_weights, allow_nonfinite=True)
            )
            update = ClientUpdate(header.client_id, header.num_examples, weights, groups)
            strategy.check_update(current, update)
        store.updates.save(
            claim.server_round,
            header.client_id,
            header.num_examples,
            body,
            streamed,
            durable=durable,
        )
    return claim.answer


def round_updates(
    store: RunStore, server_round: int, current: Mapping[str, Any]
) -> Iterator[ClientUpdate]:
    """Yield the round's journalled updates in client-id order, decoded from memory maps.

    They were checked when they arrived, and the journal's checksum vouches that these are
    the same bytes: they are decoded here without checking their tensors again. A delta
    update comes as its raw maps and as global + delta (`current`: the round's global
    weights of the tensors updates carry).
    """
    spec = spec_of(current)
    for client_id, num_examples, body in store.updates.pending(server_round):
        header, raw_weights = decode_update(body)
        groups = decode_groups(header.groups, allow_nonfinite=True)
        if header.delta:
            rebuilt = RebuiltWeights(raw_weights, spec, current)
            yield ClientUpdate(client_id, num_examples, rebuilt, groups, deltas=raw_weights)
        else:
            weights = decode_weights(raw_weights, allow_nonfinite=True)
            yield ClientUpdate(client_id, num_examples, weights, groups)


def _check_deltas(raw_weights: Mapping[str, Any], state: FederationState) -> int:
    """Check a delta update against the round's model; return its extra plain-equivalent bytes."""
    if state.config.compression is None:
        raise InvalidUpdate(
            "invalid_update",
            "this run takes full weights: a 'delta' update needs the compression section "
            "in the experiment config (the round config announces none)",
        )
    return check_deltas(raw_weights, state.spec)


def _expected_groups(
    header: UpdateHeader, expected: Mapping[str, Mapping[str, TensorSpec]]
) -> dict[str, Any]:
    """Return the update's groups, refusing it (422) unless they are the round's groups."""
    if set(header.groups) != set(expected):
        missing = sorted(set(expected) - set(header.groups))
        extra = sorted(set(header.groups) - set(expected))
        problem = (
            f"group {missing[0]!r} is missing" if missing else f"group {extra[0]!r} is not used"
        )
        raise InvalidUpdate(
            "invalid_update",
            f"{problem}: this round's updates carry the groups {sorted(expected)} "
            "(update_groups in the round config)",
        )
    return header.groups


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{key}: {err['msg']}")
    return "invalid update fields: " + "; ".join(parts)
