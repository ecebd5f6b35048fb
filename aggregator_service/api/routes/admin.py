"""Operator actions, admin token only: POST /admin/stop and POST /admin/skip_round."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from aggregator_service.api.auth import admin_caller
from aggregator_service.api.deps import FederationDep
from aggregator_service.federation.federation import Federation
from shared.errors import Conflict, Unavailable

__all__ = ["router"]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid bearer token"},
    403: {"description": "not the admin token, or no admin token is configured"},
    409: {"description": "nothing to act on (no round is training, or the run is finished)"},
    503: {"description": "the round loop has stopped on an error"},
}

router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(admin_caller)], responses=_RESPONSES
)


@router.post("/stop", status_code=202)
def stop(federation: FederationDep) -> dict[str, Any]:
    """Finish the run now: the last aggregated model becomes final and workers exit.

    The open round's updates are dropped. The aggregator stays up (unless it runs with
    --exit-when-finished), and a restart keeps the run finished.
    """
    _check_loop(federation)
    status = federation.state.status()
    if status["phase"] == "finished":
        raise Conflict("already_finished", "the run is already finished")
    federation.loop.request_stop()
    return {"action": "stop", "round": status["round"], "phase": status["phase"]}


@router.post("/skip_round", status_code=202)
def skip_round(federation: FederationDep) -> dict[str, Any]:
    """Close the training round now with the updates it has; retry it if it has none.

    Closing ignores `min_fit_clients`: one update is enough. Updates still being ingested
    finish first. A retry keeps the round number and invites every active client.
    """
    _check_loop(federation)
    received = federation.state.status()["received"]
    server_round = federation.loop.request_skip()
    if server_round is None:
        raise Conflict("no_open_round", "no round is training; nothing to skip")
    return {
        "action": "close" if received else "retry",
        "round": server_round,
        "received": received,
    }


def _check_loop(federation: Federation) -> None:
    if federation.loop.error is not None:
        raise Unavailable("loop_stopped", "the round loop has stopped; see the server log")
