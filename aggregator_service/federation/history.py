"""A closed round's row of /history: who took part, what they reported, what it cost."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from aggregator_service.federation.state import RoundState, UpdateRecord
from shared.evaluation import EvalResult

__all__ = ["brief", "compression_ratio", "history_row", "metric_summary", "staleness_summary"]


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
    bytes_in = sum(r.nbytes for r in records)
    raw_bytes_in = sum(r.nbytes if r.raw_nbytes is None else r.raw_nbytes for r in records)
    return {
        "round": current.server_round,
        "attempts": current.attempt + 1,
        "participants": sorted(r.client_id for r in records),
        "selected": sorted(current.selected),
        "num_examples": sum(r.num_examples for r in records),
        "train_loss": train_loss,
        "eval_loss": evaluation.loss if evaluation else None,
        "eval_accuracy": evaluation.accuracy if evaluation else None,
        "dp_sgd_epsilon_max": dp_sgd_epsilon_max,
        "bytes_in": bytes_in,
        "bytes_out": current.bytes_out,
        # the same traffic as plain float tensors, and how many times smaller it went
        "raw_bytes_in": raw_bytes_in,
        "raw_bytes_out": current.raw_bytes_out,
        "compression_in": compression_ratio(raw_bytes_in, bytes_in),
        "compression_out": compression_ratio(current.raw_bytes_out, current.bytes_out),
        "duration_s": round(time.monotonic() - current.started_at, 4),
        "started_at": current.opened_at,
        "finished_at": time.time(),
        "model_sha256": model_sha256,
        "metrics": metrics,
        "clients": {
            r.client_id: {
                "num_examples": r.num_examples,
                **r.metrics,
                **_timing(current, r),
                **_staleness_of(current, r),
            }
            for r in sorted(records, key=lambda r: r.client_id)
        },
    } | staleness_summary(current.server_round, records)


def staleness_summary(server_round: int, records: list[UpdateRecord]) -> dict[str, Any]:
    """Return an async version's staleness figures: mean, max, and how many of each."""
    ages = [server_round - r.update_round for r in records if r.update_round is not None]
    if not ages:
        return {}
    counts = {str(age): ages.count(age) for age in sorted(set(ages))}
    return {
        "version": server_round,
        "staleness": {"mean": sum(ages) / len(ages), "max": max(ages), "counts": counts},
    }


def _staleness_of(current: RoundState, record: UpdateRecord) -> dict[str, int]:
    """Return one async update's round and staleness for its client's entry."""
    if record.update_round is None:
        return {}
    return {
        "update_round": record.update_round,
        "staleness": current.server_round - record.update_round,
    }


def _timing(current: RoundState, record: UpdateRecord) -> dict[str, float | None]:
    """Return when an update arrived after its round opened, and how long its upload took."""
    arrived = record.received_at
    received_s = round(arrived - current.opened_at, 4) if arrived is not None else None
    return {"received_s": received_s, "upload_s": record.upload_s}


def compression_ratio(raw_bytes: int, sent_bytes: int) -> float | None:
    """Return uncompressed-equivalent bytes / bytes sent; None when nothing was sent."""
    return round(raw_bytes / sent_bytes, 4) if sent_bytes else None


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
