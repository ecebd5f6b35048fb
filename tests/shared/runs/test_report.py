"""Run-folder outputs written from hand-made /history rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from shared.runs.report import (
    TENSORBOARD_SCALARS,
    client_epsilons,
    megabytes,
    plot_curves,
    summarize,
    traffic,
    write_metrics_csv,
    write_metrics_json,
    write_report,
    write_tensorboard,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_history() -> list[dict[str, Any]]:
    return [
        {
            "round": 1,
            "attempts": 1,
            "participants": ["0", "1"],
            "num_examples": 800,
            "train_loss": 1.5,
            "eval_loss": 1.0,
            "eval_accuracy": 0.6,
            "bytes_in": 1_500_000,
            "bytes_out": 2_000_000,
            "duration_s": 2.0,
            "finished_at": 100.0,
        },
        {
            "round": 2,
            "attempts": 2,
            "participants": ["0", "1", "2"],
            "num_examples": 1200,
            "train_loss": 0.75,
            "eval_loss": 0.5,
            "eval_accuracy": 0.85,
            "bytes_in": 2_500_000,
            "bytes_out": 3_000_000,
            "duration_s": 3.0,
            "finished_at": 103.0,
        },
        {
            "round": 3,
            "attempts": 1,
            "participants": ["1", "2"],
            "num_examples": 800,
            "train_loss": 0.5,
            "eval_loss": 0.625,
            "eval_accuracy": 0.8,
            "bytes_in": 2_000_000,
            "bytes_out": 1_000_000,
            "duration_s": 1.0,
            "finished_at": 104.0,
        },
    ]


def test_megabytes_are_decimal() -> None:
    assert megabytes(2_500_000) == 2.5
    assert megabytes(0) == 0.0


def test_traffic_per_round_total_and_mean() -> None:
    flow = traffic(make_history())
    assert [r["mb_in"] for r in flow["per_round"]] == [1.5, 2.5, 2.0]
    assert [r["mb_out"] for r in flow["per_round"]] == [2.0, 3.0, 1.0]
    assert flow["total_mb_in"] == pytest.approx(6.0)
    assert flow["total_mb_out"] == pytest.approx(6.0)
    assert flow["mean_mb_in_per_round"] == pytest.approx(2.0)
    assert flow["mean_mb_out_per_round"] == pytest.approx(2.0)


def test_summarize_final_best_and_totals() -> None:
    summary = summarize(make_history(), status="finished")
    assert summary["rounds"] == 3
    assert summary["final_round"] == 3
    assert summary["final_accuracy"] == 0.8
    assert summary["best_accuracy"] == 0.85
    assert summary["best_round"] == 2
    assert summary["final_eval_loss"] == 0.625
    assert summary["total_examples"] == 2800
    assert summary["rounds_duration_s"] == pytest.approx(6.0)
    assert summary["status"] == "finished"
    assert summary["dp_sgd_epsilon_by_client"] is None  # no DP-SGD


def test_summarize_keeps_each_dp_sgd_clients_last_epsilon() -> None:
    history = make_history()
    history[0]["clients"] = {"b": {"dp_epsilon": 1.0}, "a": {"dp_epsilon": 1.0}}
    history[1]["clients"] = {"a": {"dp_epsilon": 2.0}, "3": {"dp_epsilon": 0.5}}
    assert client_epsilons(history) == {"3": 0.5, "a": 2.0, "b": 1.0}
    assert list(client_epsilons(history)) == ["3", "a", "b"]  # numbers first
    assert summarize(history)["dp_sgd_epsilon_by_client"] == {"3": 0.5, "a": 2.0, "b": 1.0}


def test_summarize_without_server_evaluation_or_rounds() -> None:
    rows = [dict(row, eval_accuracy=None, eval_loss=None) for row in make_history()]
    summary = summarize(rows)
    assert summary["final_accuracy"] is None
    assert summary["best_round"] is None
    assert summarize([])["rounds"] == 0
    assert summarize([])["total_mb_in"] == 0


def test_metrics_csv_has_one_line_per_round(tmp_path: Path) -> None:
    path = write_metrics_csv(tmp_path / "metrics.csv", make_history())
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["round"] for row in rows] == ["1", "2", "3"]
    assert rows[1]["num_participants"] == "3"
    assert rows[1]["participants"] == "0 1 2"
    assert float(rows[1]["eval_accuracy"]) == 0.85
    assert float(rows[1]["mb_in"]) == 2.5
    assert float(rows[1]["mb_out"]) == 3.0
    assert rows[1]["attempts"] == "2"


def test_metrics_csv_leaves_missing_values_empty(tmp_path: Path) -> None:
    rows = [dict(make_history()[0], eval_accuracy=None)]
    path = write_metrics_csv(tmp_path / "metrics.csv", rows)
    with path.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["eval_accuracy"] == ""


def test_metrics_json_holds_summary_and_rounds(tmp_path: Path) -> None:
    history = make_history()
    path = write_metrics_json(tmp_path / "metrics.json", history, {"final_accuracy": 0.8})
    document = json.loads(path.read_text())
    assert document["summary"] == {"final_accuracy": 0.8}
    assert document["rounds"] == history


def test_curves_png_is_a_png(tmp_path: Path) -> None:
    path = plot_curves(tmp_path / "curves.png", make_history(), title="test run")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 1000


def test_curves_png_without_any_round(tmp_path: Path) -> None:
    path = plot_curves(tmp_path / "curves.png", [])
    assert path.read_bytes()[:8] == PNG_MAGIC


def read_scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_file))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_tensorboard_event_file_holds_every_scalar(tmp_path: Path) -> None:
    event_file = write_tensorboard(tmp_path / "tb", make_history())
    assert event_file.name.startswith("events.out.tfevents.")
    scalars = read_scalars(event_file)
    no_dp = {"dp_sgd_epsilon_max", "epsilon"}  # a run without DP
    assert set(scalars) == set(TENSORBOARD_SCALARS) - no_dp
    steps, values = zip(*scalars["eval_accuracy"], strict=True)
    assert steps == (1, 2, 3)
    assert values == pytest.approx((0.6, 0.85, 0.8))  # stored as float32
    assert scalars["bytes_in"] == [(1, 1_500_000.0), (2, 2_500_000.0), (3, 2_000_000.0)]
    assert [value for _, value in scalars["duration_s"]] == [2.0, 3.0, 1.0]


def test_tensorboard_skips_missing_values(tmp_path: Path) -> None:
    rows = [dict(row, eval_accuracy=None) for row in make_history()]
    scalars = read_scalars(write_tensorboard(tmp_path / "tb", rows))
    assert "eval_accuracy" not in scalars
    assert len(scalars["train_loss"]) == 3


def test_write_report_leaves_every_artifact(tmp_path: Path) -> None:
    paths = write_report(tmp_path, make_history(), title="t", status="finished")
    assert paths.metrics_csv == tmp_path / "metrics.csv"
    assert paths.curves_png.read_bytes()[:8] == PNG_MAGIC
    assert paths.tensorboard.parent == tmp_path / "tensorboard"
    summary = json.loads(paths.metrics_json.read_text())["summary"]
    assert summary["status"] == "finished"
    assert summary["total_mb_in"] == pytest.approx(6.0)


def test_dp_fedavg_epsilon_is_in_the_csv_the_summary_and_tensorboard(tmp_path: Path) -> None:
    history = [dict(row, epsilon=0.5 * row["round"], delta=1e-5) for row in make_history()]
    with write_metrics_csv(tmp_path / "metrics.csv", history).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(row["epsilon"]) for row in rows] == [0.5, 1.0, 1.5]
    assert summarize(history)["final_epsilon"] == 1.5
    scalars = read_scalars(write_tensorboard(tmp_path / "tb", history))
    assert scalars["epsilon"] == [(1, 0.5), (2, 1.0), (3, 1.5)]


def test_without_dp_the_epsilon_cells_are_empty(tmp_path: Path) -> None:
    with write_metrics_csv(tmp_path / "metrics.csv", make_history()).open(newline="") as f:
        assert {row["epsilon"] for row in csv.DictReader(f)} == {""}
    assert summarize(make_history())["final_epsilon"] is None


def test_traffic_counts_plain_equivalent_bytes_and_the_ratios() -> None:
    history = make_history()
    history[0] |= {"raw_bytes_in": 15_000_000, "raw_bytes_out": 4_000_000}
    flow = traffic(history)
    assert flow["total_raw_mb_in"] == pytest.approx(15.0 + 2.5 + 2.0)
    assert flow["total_raw_mb_out"] == pytest.approx(4.0 + 3.0 + 1.0)
    assert flow["compression_in"] == pytest.approx(19.5 / 6.0, abs=1e-4)
    assert flow["compression_out"] == pytest.approx(8.0 / 6.0, abs=1e-4)
    assert summarize(history)["compression_in"] == flow["compression_in"]
    assert traffic([])["compression_in"] is None


def test_metrics_csv_has_the_compression_columns(tmp_path: Path) -> None:
    history = make_history()
    history[0] |= {"raw_bytes_in": 15_000_000, "compression_in": 10.0}
    with write_metrics_csv(tmp_path / "metrics.csv", history).open() as file:
        first = next(csv.DictReader(file))
    assert (first["raw_bytes_in"], first["compression_in"]) == ("15000000", "10.0")


def test_metrics_csv_has_an_async_versions_staleness(tmp_path: Path) -> None:
    history = make_history()
    history[0] |= {"staleness": {"mean": 1.5, "max": 3, "counts": {"0": 1}}, "stale_refused": 2}
    with write_metrics_csv(tmp_path / "metrics.csv", history).open() as file:
        first, second, _ = list(csv.DictReader(file))
    assert (first["staleness_mean"], first["staleness_max"], first["stale_refused"]) == (
        "1.5",
        "3",
        "2",
    )
    assert second["staleness_mean"] == ""  # a synchronous round
