"""Read-only views for people and monitors: /status, /history, /clients, /metrics, /healthz.

/status and /healthz answer on the event loop (a snapshot under the state's lock, held
only briefly by anyone); /history and /metrics, which grow with the run, on the thread pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from aggregator_service.api.auth import reader_caller
from aggregator_service.api.deps import FederationDep
from aggregator_service.api.metrics import render_metrics
from aggregator_service.federation.board import client_board

__all__ = ["router"]

router = APIRouter(tags=["inspect"])
_READERS = [Depends(reader_caller)]  # any client's, the admin's or the viewer's token


@router.get("/status", dependencies=_READERS)
async def status(federation: FederationDep) -> dict[str, Any]:
    """Return the round, phase, clients, this round's updates and the last round's metrics."""
    return federation.state.status()


@router.get("/history", dependencies=_READERS)
def history(federation: FederationDep) -> list[dict[str, Any]]:
    """Return one row per finished round."""
    with federation.state.lock:
        return list(federation.state.history)


@router.get("/clients", dependencies=_READERS)
async def clients(federation: FederationDep) -> dict[str, Any]:
    """Return each registered client's state this round, last seen, bytes, loss, refusal."""
    return client_board(federation.state)


@router.get("/metrics", response_class=PlainTextResponse, dependencies=_READERS)
def metrics(federation: FederationDep) -> str:
    """Return counters and gauges in the Prometheus text format."""
    return render_metrics(federation.state)


@router.get("/healthz", response_model=None)
async def healthz(federation: FederationDep) -> dict[str, str] | JSONResponse:
    """Return ok while the round loop is alive."""
    error = federation.loop.error
    if error is not None:
        return JSONResponse({"status": "failing", "detail": "round loop stopped"}, status_code=503)
    return {"status": "ok"}
