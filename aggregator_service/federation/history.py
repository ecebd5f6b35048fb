"""A closed round's row of /history: who took part, what they reported, what it cost."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from aggregator_service.federation.state import RoundState, UpdateRecord
from shared.evaluation import EvalResult

__all__ = ["brief", "history_row", "metric_summary"]


def history_row(
    current: RoundState,
    records: list[UpdateRecord],
    evaluation: EvalResult | None,
    *,
    model_sha256: str,
) -> dict[str, Any]:
    """Summarise a closed round for /history (`model_sha256`: of the new global model)."""
    metrics = metric_summary(records)
    train_loss = metrics.get("train_loss", {}).get("mean")
    # DP-SGD: each client's epsilon so far; the weighted mean would hide the worst-off client
    dp_sgd_epsilon_max = metrics.get("dp_epsilon", {}).get("max")
    return {
        "round": current.server_round,
        "attempts": current.attempt + 1,
        "participants": sorted(r.client_id for r in records),
        "num_examples": sum(r.num_examples for r in records),
        "train_loss": train_loss,
        "eval_loss": evaluation.loss if evaluation else None,
        "eval_accuracy": evaluation.accuracy if evaluation else None,
        "dp_sgd_epsilon_max": dp_sgd_epsilon_max,
        "bytes_in": sum(r.nbytes for r in records),
        "bytes_out": current.bytes_out,
        "duration_s": round(time.monotonic() - current.started_at, 4),
        "finished_at": time.time(),
        "model_sha256": model_sha256,
        "metrics": metrics,
        "clients": {
            r.client_id: {"num_examples": r.num_examples, **r.metrics}
            for r in sorted(records, key=lambda r: r.client_id)
        },
    }


def metric_summary(records: list[UpdateRecord]) -> dict[str, dict[str, float]]:
    """Return, per metric the clients reported, its example-weighted mean and spread.

    `mean` and `std` weight each client by its `num_examples` (a metric reported by only
    some clients is summarised over those); `min` and `max` are over the clients.
    """
    names = sorted({name for r in records for name in r.metrics})
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        pairs = [(r.metrics[name], r.num_examples) for r in records if name in r.metrics]
        total = sum(n for _, n in pairs)
        mean = sum(value * n for value, n in pairs) / total
        variance = sum(n * (value - mean) ** 2 for value, n in pairs) / total
        values = [value for value, _ in pairs]
        summary[name] = {
            "mean": mean,
            "std": math.sqrt(variance),
            "min": min(values),
            "max": max(values),
            "clients": len(pairs),
        }
    return summary


def brief(row: Mapping[str, Any]) -> str:
    """One log line's account of a closed round."""
    acc = row["eval_accuracy"]
    acc_text = f"{acc:.4f}" if acc is not None else "n/a"
    return (
        f"{len(row['participants'])} updates, {row['num_examples']} examples, accuracy {acc_text}"
    )
