"""Tests of phase spans: their JSON lines, reading them back, and the totals per client."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.timeline import ClientTotals, PhaseSpan, phase_totals, read_spans, read_timeline_dir


def test_a_span_round_trips_through_its_json_line() -> None:
    span = PhaseSpan("7", 3, "uploading", 1000.25, 1001.5)
    assert read_spans([span.line()]) == [span]
    assert span.seconds == pytest.approx(1.25)


def test_lines_that_are_not_spans_are_skipped() -> None:
    good = PhaseSpan("1", 1, "training", 10.0, 12.0)
    lines = [
        good.line(),
        "\n",
        '{"client_id": "1", "round": 1, "phase": "napping", "start": 1, "end": 2}\n',
        '{"client_id": "1", "round": 1, "phase": "idle", "start": 5, "end": 4}\n',
        '{"client_id": "1", "round": 1, "phase": "idle", "start": 5}\n',
        '{"client_id": "1", "round": 1, "pha',  # the last line of a killed writer
    ]
    assert read_spans(lines) == [good]


def test_a_directory_of_files_is_read_in_time_order(tmp_path: Path) -> None:
    late, early = PhaseSpan("0", 2, "waiting", 20.0, 25.0), PhaseSpan("5", 1, "idle", 1.0, 2.0)
    (tmp_path / "worker-0.jsonl").write_text(late.line())
    (tmp_path / "worker-5.jsonl").write_text(early.line())
    (tmp_path / "notes.txt").write_text(early.line())
    assert read_timeline_dir(tmp_path) == [early, late]
    assert read_timeline_dir(tmp_path / "missing") == []


def test_totals_add_up_each_clients_phases_in_client_order() -> None:
    spans = [
        PhaseSpan("10", 1, "training", 0.0, 4.0),
        PhaseSpan("2", 1, "idle", 0.0, 1.0),
        PhaseSpan("2", 1, "training", 1.0, 2.0),
        PhaseSpan("2", 1, "uploading", 2.0, 2.5),
        PhaseSpan("2", 1, "waiting", 2.5, 6.0),
        PhaseSpan("2", 2, "training", 6.0, 7.0),
        PhaseSpan("2", 2, "uploading", 7.0, 7.25),
        PhaseSpan("10", 1, "uploading", 4.0, 5.0),
        PhaseSpan("alice", 1, "idle", 0.0, 3.0),
    ]
    assert phase_totals(spans) == [
        ClientTotals("2", training_s=2.0, uploading_s=0.75, waiting_s=3.5, idle_s=1.0, updates=2),
        ClientTotals("10", training_s=4.0, uploading_s=1.0, updates=1),
        ClientTotals("alice", idle_s=3.0),
    ]
    assert phase_totals([]) == []
