"""Tests of aggregator_service/federation/history.py: the rows of /history."""

from __future__ import annotations

import math

import pytest

from aggregator_service.federation.history import history_row, metric_summary
from aggregator_service.federation.state import RoundState, UpdateRecord
from shared.evaluation import EvalResult


def _records() -> list[UpdateRecord]:
    return [
        UpdateRecord("a", 10, {"train_loss": 1.0, "local_accuracy": 0.5}, 100),
        UpdateRecord("b", 30, {"train_loss": 2.0, "local_accuracy": 0.9}, 200),
        UpdateRecord("c", 60, {"train_loss": 0.5}, 300),
    ]


def test_metrics_are_summarised_by_hand_computed_weighted_means() -> None:
    summary = metric_summary(_records())
    # train_loss: (10*1 + 30*2 + 60*0.5) / 100 = 1.0
    assert summary["train_loss"]["mean"] == pytest.approx(1.0)
    # variance: (10*0 + 30*1 + 60*0.25) / 100 = 0.45
    assert summary["train_loss"]["std"] == pytest.approx(math.sqrt(0.45))
    assert (summary["train_loss"]["min"], summary["train_loss"]["max"]) == (0.5, 2.0)
    assert summary["train_loss"]["clients"] == 3
    # reported by a and b only: (10*0.5 + 30*0.9) / 40 = 0.8
    assert summary["local_accuracy"]["mean"] == pytest.approx(0.8)
    assert summary["local_accuracy"]["clients"] == 2


def test_a_row_carries_the_summary_the_participants_and_the_model_hash() -> None:
    current = RoundState(4, "aggregating", attempt=1)
    row = history_row(current, _records(), EvalResult(0.3, 0.91, 1000), model_sha256="ab" * 32)
    assert row["round"] == 4
    assert row["attempts"] == 2
    assert row["participants"] == ["a", "b", "c"]
    assert row["num_examples"] == 100
    assert row["train_loss"] == pytest.approx(1.0)
    assert row["metrics"]["local_accuracy"]["mean"] == pytest.approx(0.8)
    assert row["eval_accuracy"] == 0.91
    assert row["bytes_in"] == 600
    assert row["model_sha256"] == "ab" * 32
    assert row["clients"]["b"] == {
        "num_examples": 30,
        "train_loss": 2.0,
        "local_accuracy": 0.9,
        "received_s": None,  # not recorded live (resumed from the journal)
        "upload_s": None,
    }


def test_a_row_times_each_update_from_the_rounds_opening() -> None:
    current = RoundState(2, "aggregating", selected=frozenset({"a", "b"}), opened_at=1000.0)
    record = UpdateRecord("a", 10, {}, 100, received_at=1002.5, upload_s=0.25)
    row = history_row(current, [record], None, model_sha256="ab" * 32)
    assert row["started_at"] == 1000.0
    assert row["selected"] == ["a", "b"]
    assert row["clients"]["a"]["received_s"] == pytest.approx(2.5)
    assert row["clients"]["a"]["upload_s"] == 0.25


def test_a_round_without_metrics_has_an_empty_summary() -> None:
    row = history_row(
        RoundState(1, "aggregating"),
        [UpdateRecord("a", 5, {}, 10)],
        None,
        model_sha256="00" * 32,
    )
    assert row["metrics"] == {}
    assert row["train_loss"] is None
    assert row["dp_sgd_epsilon_max"] is None


def test_a_row_names_the_largest_dp_sgd_epsilon_of_its_clients() -> None:
    records = [
        UpdateRecord("a", 90, {"dp_epsilon": 1.0, "dp_delta": 1e-5}, 10),
        UpdateRecord("b", 10, {"dp_epsilon": 3.0, "dp_delta": 1e-5}, 10),
    ]
    row = history_row(RoundState(2, "aggregating"), records, None, model_sha256="00" * 32)
    assert row["dp_sgd_epsilon_max"] == 3.0  # the small client spent the most
    assert row["metrics"]["dp_epsilon"]["mean"] == pytest.approx(1.2)  # the weighted mean
    assert row["clients"]["b"]["dp_epsilon"] == 3.0
