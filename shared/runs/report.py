"""The run folder: made at the start with config.yaml and logs/, and the report at the end.

The report is what a run leaves behind, computed from the aggregator's /history rows:

    metrics.csv     one row per round (the /history fields, MB in/out, participant count;
                    bytes as plain float tensors and the compression ratios;
                    dp_sgd_epsilon_max: the largest DP-SGD epsilon of the round's clients;
                    epsilon: DP-FedAvg's epsilon after the round, empty otherwise)
    metrics.json    {"summary": {...}, "rounds": [the /history rows]}; a DP-SGD run's
                    summary has each client's epsilon after its last round
    curves.png      accuracy and loss versus round
    tensorboard/    one event file: eval_accuracy, eval_loss, train_loss,
                    dp_sgd_epsilon_max, epsilon, bytes_in, bytes_out, duration_s per round
                    (`tensorboard --logdir runs`)

timeline.png and timeline.csv, the clients' phases over time, are shared/runs/timeline.py's.
matplotlib and TensorBoard are imported inside their writers: the runner starts fast and
only pays for them once, at the end.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.config import ExperimentConfig
from shared.errors import TributaryError

__all__ = [
    "CSV_FIELDS",
    "TENSORBOARD_SCALARS",
    "ReportPaths",
    "client_epsilons",
    "create_run_dir",
    "megabytes",
    "plot_curves",
    "summarize",
    "traffic",
    "write_config",
    "write_metrics_csv",
    "write_metrics_json",
    "write_report",
    "write_tensorboard",
]

Row = Mapping[str, Any]

BYTES_PER_MB = 1_000_000  # decimal megabytes, as network traffic is usually counted
CSV_FIELDS = (
    "round",
    "num_participants",
    "participants",
    "num_examples",
    "train_loss",
    "eval_loss",
    "eval_accuracy",
    "dp_sgd_epsilon_max",
    "epsilon",
    "bytes_in",
    "bytes_out",
    "mb_in",
    "mb_out",
    "raw_bytes_in",
    "raw_bytes_out",
    "compression_in",
    "compression_out",
    "duration_s",
    "attempts",
    "finished_at",
    "model_sha256",
    "staleness_mean",  # async mode: the version's updates, versions old; empty in sync mode
    "staleness_max",
    "stale_refused",
)
TENSORBOARD_SCALARS = (
    "eval_accuracy",
    "eval_loss",
    "train_loss",
    "dp_sgd_epsilon_max",
    "bytes_in",
    "bytes_out",
    "duration_s",
    "epsilon",  # DP-FedAvg's runs only (docs/privacy.md)
)


def create_run_dir(runs_dir: Path, config: ExperimentConfig, *, now: float | None = None) -> Path:
    """Create runs_dir/<timestamp>-<model>-<dataset>/ (with a -2, -3 ... suffix if taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = f"{stamp}-{config.model}-{config.dataset}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        run_dir = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        (run_dir / "logs").mkdir()
        return run_dir
    raise TributaryError(f"cannot create a run folder {base} under {runs_dir}: all names taken")


def write_config(run_dir: Path, config: ExperimentConfig) -> Path:
    """Write the resolved config as run_dir/config.yaml (what every process loads)."""
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def megabytes(num_bytes: float) -> float:
    """Return `num_bytes` in decimal megabytes (10**6 bytes)."""
    return num_bytes / BYTES_PER_MB


def traffic(history: Sequence[Row]) -> dict[str, Any]:
    """Return MB in and out per round, in total, per round on average, and as compressed.

    The `raw` figures are the same traffic as plain float tensors (the rows' raw_bytes_in
    and raw_bytes_out; rows without them count as sent), `compression_*` the ratio of raw
    to sent bytes over the run (None when nothing was sent).
    """
    per_round = [
        {
            "round": row["round"],
            "mb_in": megabytes(row.get("bytes_in") or 0),
            "mb_out": megabytes(row.get("bytes_out") or 0),
            "raw_mb_in": megabytes(_raw(row, "in")),
            "raw_mb_out": megabytes(_raw(row, "out")),
        }
        for row in history
    ]
    totals = {key: sum(r[key] for r in per_round) for key in _TRAFFIC}
    count = max(len(per_round), 1)
    return {
        "per_round": per_round,
        "total_mb_in": totals["mb_in"],
        "total_mb_out": totals["mb_out"],
        "mean_mb_in_per_round": totals["mb_in"] / count,
        "mean_mb_out_per_round": totals["mb_out"] / count,
        "total_raw_mb_in": totals["raw_mb_in"],
        "total_raw_mb_out": totals["raw_mb_out"],
        "compression_in": _ratio(totals["raw_mb_in"], totals["mb_in"]),
        "compression_out": _ratio(totals["raw_mb_out"], totals["mb_out"]),
    }


def client_epsilons(history: Sequence[Row]) -> dict[str, float]:
    """Return each DP-SGD client's epsilon after the last round it took part in, by client id.

    Clients are in numeric order of their ids where they are numbers; none without DP-SGD.
    """
    latest: dict[str, float] = {}
    for row in history:
        for client, measured in (row.get("clients") or {}).items():
            epsilon = (measured or {}).get("dp_epsilon")
            if epsilon is not None:
                latest[str(client)] = float(epsilon)
    return dict(sorted(latest.items(), key=lambda item: _client_order(item[0])))


def _client_order(client: str) -> tuple[int, int, str]:
    return (0, int(client), "") if client.isdigit() else (1, 0, client)


_TRAFFIC = ("mb_in", "mb_out", "raw_mb_in", "raw_mb_out")


def _raw(row: Row, direction: str) -> float:
    """Return a row's bytes in or out as plain float tensors (as sent when not recorded)."""
    raw = row.get(f"raw_bytes_{direction}")
    return float(raw if raw is not None else row.get(f"bytes_{direction}") or 0)


def _ratio(raw: float, sent: float) -> float | None:
    return round(raw / sent, 4) if sent else None


def _last_value(history: Sequence[Row], key: str) -> Any:
    values = [row.get(key) for row in history if row.get(key) is not None]
    return values[-1] if values else None


def summarize(history: Sequence[Row], **extra: Any) -> dict[str, Any]:
    """Return the run's summary: final and best accuracy, losses, traffic, time (+ `extra`)."""
    accuracies = [row["eval_accuracy"] for row in history if row.get("eval_accuracy") is not None]
    flow = traffic(history)
    best = max(accuracies) if accuracies else None
    best_round = next(
        (row["round"] for row in history if best is not None and row.get("eval_accuracy") == best),
        None,
    )
    return {
        "rounds": len(history),
        "final_round": history[-1]["round"] if history else None,
        "final_accuracy": _last_value(history, "eval_accuracy"),
        "final_eval_loss": _last_value(history, "eval_loss"),
        "final_train_loss": _last_value(history, "train_loss"),
        "final_epsilon": _last_value(history, "epsilon"),  # DP-FedAvg; None otherwise
        "best_accuracy": best,
        "best_round": best_round,
        "final_dp_sgd_epsilon_max": _last_value(history, "dp_sgd_epsilon_max"),
        "dp_sgd_epsilon_by_client": client_epsilons(history) or None,
        "total_examples": sum(row.get("num_examples") or 0 for row in history),
        "total_mb_in": flow["total_mb_in"],
        "total_mb_out": flow["total_mb_out"],
        "mean_mb_in_per_round": flow["mean_mb_in_per_round"],
        "mean_mb_out_per_round": flow["mean_mb_out_per_round"],
        "total_raw_mb_in": flow["total_raw_mb_in"],
        "total_raw_mb_out": flow["total_raw_mb_out"],
        "compression_in": flow["compression_in"],
        "compression_out": flow["compression_out"],
        "rounds_duration_s": sum(row.get("duration_s") or 0.0 for row in history),
        **extra,
    }


def _csv_row(row: Row) -> dict[str, Any]:
    participants = list(row.get("participants") or [])
    out = {key: row.get(key) for key in CSV_FIELDS}
    out["num_participants"] = len(participants)
    out["participants"] = " ".join(str(p) for p in participants)
    out["mb_in"] = megabytes(row.get("bytes_in") or 0)
    out["mb_out"] = megabytes(row.get("bytes_out") or 0)
    staleness = row.get("staleness") or {}
    out["staleness_mean"], out["staleness_max"] = staleness.get("mean"), staleness.get("max")
    return out


def write_metrics_csv(path: Path, history: Sequence[Row]) -> Path:
    """Write one CSV line per round (empty cells for missing values)."""
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_csv_row(row) for row in history)
    return path


def write_metrics_json(path: Path, history: Sequence[Row], summary: Mapping[str, Any]) -> Path:
    """Write {"summary": ..., "rounds": [...]} as indented JSON."""
    document = {"summary": dict(summary), "rounds": [dict(row) for row in history]}
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def _series(history: Sequence[Row], key: str) -> tuple[list[int], list[float]]:
    points = [(row["round"], row[key]) for row in history if row.get(key) is not None]
    return [r for r, _ in points], [float(v) for _, v in points]


def plot_curves(path: Path, history: Sequence[Row], *, title: str = "") -> Path:
    """Draw accuracy (left) and loss (right) versus round into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)  # no pyplot: no global state, no display needed
    accuracy_ax, loss_ax = figure.subplots(1, 2)
    rounds, accuracy = _series(history, "eval_accuracy")
    accuracy_ax.plot(rounds, accuracy, marker="o", label="eval accuracy (server)")
    accuracy_ax.set(xlabel="round", ylabel="accuracy", title="test accuracy")
    for key, label in (("train_loss", "train loss (clients)"), ("eval_loss", "eval loss")):
        loss_ax.plot(*_series(history, key), marker="o", label=label)
    loss_ax.set(xlabel="round", ylabel="loss", title="loss")
    for ax in (accuracy_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.has_data():
            ax.legend()
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return path


def write_tensorboard(log_dir: Path, history: Sequence[Row]) -> Path:
    """Write one scalar per TENSORBOARD_SCALARS key and round; return the event file."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    before = set(log_dir.glob("events.out.tfevents.*"))
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for row in history:
            for key in TENSORBOARD_SCALARS:
                value = row.get(key)
                if value is not None and math.isfinite(value):
                    writer.add_scalar(key, float(value), global_step=int(row["round"]))
    finally:
        writer.close()
    created = sorted(set(log_dir.glob("events.out.tfevents.*")) - before)
    return created[-1] if created else log_dir


@dataclass(frozen=True)
class ReportPaths:
    """The files one report wrote."""

    metrics_csv: Path
    metrics_json: Path
    curves_png: Path
    tensorboard: Path


def write_report(
    run_dir: Path, history: Sequence[Row], *, title: str = "", **extra: Any
) -> ReportPaths:
    """Write metrics.csv, metrics.json, curves.png and tensorboard/ into `run_dir`."""
    summary = summarize(history, **extra)
    return ReportPaths(
        metrics_csv=write_metrics_csv(run_dir / "metrics.csv", history),
        metrics_json=write_metrics_json(run_dir / "metrics.json", history, summary),
        curves_png=plot_curves(run_dir / "curves.png", history, title=title),
        tensorboard=write_tensorboard(run_dir / "tensorboard", history),
    )
