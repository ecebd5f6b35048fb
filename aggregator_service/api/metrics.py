"""GET /metrics in the Prometheus text exposition format."""

from __future__ import annotations

import time

from aggregator_service.federation.state import FederationState

__all__ = ["render_metrics"]


def render_metrics(state: FederationState) -> str:
    """Render the federation's gauges and counters."""
    with state.lock:
        current = state.round
        counters = state.counters
        last = state.history[-1] if state.history else {}
        lines = [
            *_metric("tributary_round", "gauge", "Current server round.", current.server_round),
            *_metric(
                "tributary_registered_clients", "gauge", "Registered clients.", len(state.clients)
            ),
            *_metric(
                "tributary_active_clients",
                "gauge",
                "Clients seen within the client timeout.",
                len(state.active_clients(time.monotonic())),
            ),
            *_metric(
                "tributary_round_updates",
                "gauge",
                "Updates received this round.",
                len(current.received),
            ),
            *_metric(
                "tributary_updates_accepted_total",
                "counter",
                "Updates accepted.",
                counters.updates_accepted,
            ),
            *_metric(
                "tributary_updates_duplicate_total",
                "counter",
                "Duplicate updates answered without counting them again.",
                counters.updates_duplicate,
            ),
            *_metric(
                "tributary_bytes_in_total", "counter", "Update bytes accepted.", counters.bytes_in
            ),
            *_metric(
                "tributary_bytes_out_total", "counter", "Model bytes served.", counters.bytes_out
            ),
        ]
        lines += [
            "# HELP tributary_rejected_total Requests rejected, by reason.",
            "# TYPE tributary_rejected_total counter",
        ]
        lines += [
            f'tributary_rejected_total{{reason="{code}"}} {n}'
            for code, n in sorted(counters.rejected.items())
        ]
        if last.get("eval_accuracy") is not None:
            lines += _metric(
                "tributary_eval_accuracy",
                "gauge",
                "Last round's test accuracy.",
                last["eval_accuracy"],
            )
        if last:
            lines += _metric(
                "tributary_round_duration_seconds",
                "gauge",
                "Last round's duration.",
                last["duration_s"],
            )
    return "\n".join(lines) + "\n"


def _metric(name: str, kind: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
