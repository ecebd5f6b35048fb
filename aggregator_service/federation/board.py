"""What the dashboard shows of the clients and the run: GET /clients and the event stream.

A client's state this round, from the round's sets and the client's ledger:

- ``reported``: its update of this round is recorded;
- ``uploading``: its update is being received and checked;
- ``refused``: a request of it was refused this round (`refusal` says why);
- ``late``: selected, not reported, and the round's deadline has passed;
- ``dropped``: selected, and the round closed without its update (the last closed round
  counts while the client is not selected in the next one);
- ``training``: selected and it downloaded this round's model;
- ``selected``: selected and it has not downloaded this round's model yet;
- ``idle``: not selected.

In async mode a client that holds a slot (it trains for a version) is ``training`` until
its update arrives.
"""

from __future__ import annotations

import time
from typing import Any

from aggregator_service.federation.ledger import ClientTally
from aggregator_service.federation.state import FederationState, RoundState
from shared.config import ExperimentConfig

__all__ = ["client_board", "client_state", "run_summary"]

CLOSED_PHASES = ("aggregating", "finished")


def client_board(state: FederationState) -> dict[str, Any]:
    """Return every registered client's row for GET /clients, with the round it is about."""
    with state.lock:
        now, wall = time.monotonic(), time.time()
        current = state.round
        last_row = state.history[-1] if state.history else None
        holding = set(state.book.slots) if state.book is not None else set()  # async: training
        rows = []
        for client_id in sorted(state.clients):
            info = state.clients[client_id]
            tally = state.ledger.get(client_id)
            record = current.received.get(client_id)
            received_s = None
            if record is not None and record.received_at is not None:
                received_s = round(record.received_at - current.opened_at, 4)
            refusal = tally.refusal
            round_state = client_state(client_id, current, tally, last_row, now)
            rows.append(
                {
                    "client_id": client_id,
                    "state": _async_state(round_state) if client_id in holding else round_state,
                    "selected": client_id in current.selected,
                    "active": now - info.last_seen <= state.client_timeout_s,
                    "last_seen": round(wall - (now - info.last_seen), 3),
                    "num_examples": info.num_examples,
                    "bytes_in": tally.bytes_in,
                    "bytes_out": tally.bytes_out,
                    "train_loss": tally.train_loss,
                    "received_s": received_s,
                    "refusal": None
                    if refusal is None
                    else {
                        "code": refusal.code,
                        "message": refusal.message,
                        "round": refusal.server_round,
                        "at": refusal.at,
                    },
                }
            )
        return {
            "round": current.server_round,
            "phase": current.phase,
            "opened_at": current.opened_at if current.phase != "waiting" else None,
            "now": wall,
            "clients": rows,
        }


def client_state(
    client_id: str,
    current: RoundState,
    tally: ClientTally,
    last_row: dict[str, Any] | None,
    now: float,
) -> str:
    """Return one client's state this round (the module docstring lists them)."""
    if client_id in current.received:
        return "reported"
    if client_id in current.in_flight:
        return "uploading"
    refusal = tally.refusal
    if refusal is not None and refusal.at >= current.opened_at:
        return "refused"
    if client_id in current.selected:
        if current.phase in CLOSED_PHASES:
            return "dropped"
        if now >= current.deadline:
            return "late"
        if tally.fetched_round == current.server_round:
            return "training"
        return "selected"
    if last_row is not None and _dropped_in(last_row, client_id):
        return "dropped"
    return "idle"


def _async_state(state: str) -> str:
    """Return the state of an async client that holds a slot: training until it uploads."""
    return "training" if state in ("idle", "selected", "dropped", "late") else state


def _dropped_in(row: dict[str, Any], client_id: str) -> bool:
    """Whether a closed round selected `client_id` and closed without its update."""
    return client_id in row.get("selected", ()) and client_id not in row.get("participants", ())


def run_summary(config: ExperimentConfig) -> dict[str, Any]:
    """Return what names the run: its config's name, model, data, strategy and schedule."""
    return {
        "name": config.name,
        "model": config.model,
        "dataset": config.dataset,
        "strategy": config.strategy.model_dump(mode="json"),
        "num_rounds": config.num_rounds,
        "num_partitions": config.num_partitions,
        "fraction_fit": config.fraction_fit,
        "min_fit_clients": config.min_fit_clients,
        "round_timeout_s": config.round_timeout_s,
        "close_at_threshold": config.close_at_threshold,
        "local_epochs": config.local_epochs,
        "secagg": config.secagg.enabled,
        "compression": config.compression is not None,
        "download_compression": config.download_compression is not None,
        "dp_sgd": config.dp_sgd is not None,
        "mode": config.mode,
    } | ({"async": config.asynchronous.model_dump(mode="json")} if config.mode == "async" else {})
