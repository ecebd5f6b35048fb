"""Tests of the run folder's timeline: timeline.csv, timeline.png, and reading them back."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.runs.timeline import (
    TIMELINE_CSV_FIELDS,
    lane_labels,
    plot_timeline,
    read_timeline_totals,
    round_ends,
    write_timeline,
)
from shared.timeline import PHASES, ClientTotals, PhaseSpan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _two_rounds() -> list[PhaseSpan]:
    """Client 1 trains three times longer than client 0; both take part in rounds 1 and 2."""
    spans = []
    for server_round, start in ((1, 100.0), (2, 104.0)):
        for client, train_s in (("0", 1.0), ("1", 3.0)):
            ready = start + train_s
            spans += [
                PhaseSpan(client, server_round, "training", start, ready),
                PhaseSpan(client, server_round, "uploading", ready, ready + 0.5),
                PhaseSpan(client, server_round, "waiting", ready + 0.5, start + 4.0),
            ]
    return spans


def _write_files(run_dir: Path, spans: list[PhaseSpan]) -> None:
    (run_dir / "timeline").mkdir(parents=True)
    for client in ("0", "1"):
        lines = [span.line() for span in spans if span.client_id == client]
        (run_dir / "timeline" / f"worker-{client}.jsonl").write_text("".join(lines))


def test_round_ends_come_from_the_rows_with_a_finish_time() -> None:
    history: list[dict[str, float | None]] = [
        {"round": 1, "finished_at": 104.0},
        {"round": 2},
        {"round": 3, "finished_at": None},
        {"round": 4, "finished_at": 112.5},
    ]
    assert round_ends(history) == [(1, 104.0), (4, 112.5)]


def test_many_lanes_are_labelled_every_kth() -> None:
    few = [str(k) for k in range(5)]
    assert lane_labels(few) == list(enumerate(few))
    many = [str(k) for k in range(100)]
    labelled = lane_labels(many, most=40)
    assert [lane for lane, _ in labelled] == list(range(0, 100, 3))
    assert labelled[1] == (3, "3")


def test_write_timeline_draws_the_png_and_totals_the_phases(tmp_path: Path) -> None:
    _write_files(tmp_path, _two_rounds())
    history = [{"round": 1, "finished_at": 104.0}, {"round": 2, "finished_at": 108.0}]
    paths = write_timeline(tmp_path, history, title="two clients")
    assert paths is not None
    assert paths.timeline_png.read_bytes()[:8] == PNG_MAGIC
    assert paths.timeline_png.stat().st_size > 5000
    header = paths.timeline_csv.read_text().splitlines()[0]
    assert header == ",".join(TIMELINE_CSV_FIELDS)
    fast, slow = read_timeline_totals(tmp_path)
    assert fast == ClientTotals(
        "0", training_s=2.0, uploading_s=1.0, waiting_s=5.0, idle_s=0.0, updates=2
    )
    assert slow.training_s == pytest.approx(6.0)
    assert slow.waiting_s == pytest.approx(1.0)


def test_a_timeline_of_150_clients_is_drawn(tmp_path: Path) -> None:
    spans = [
        PhaseSpan(str(client), r, phase, 10.0 * r + k, 10.0 * r + k + 1.0)
        for client in range(150)
        for r in range(5)
        for k, phase in enumerate(PHASES)
    ]
    path = plot_timeline(tmp_path / "timeline.png", spans, ends=[(r, 10.0 * r + 4) for r in range(5)])
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_without_recorded_phases_nothing_is_written(tmp_path: Path) -> None:
    assert write_timeline(tmp_path, []) is None
    (tmp_path / "timeline").mkdir()
    (tmp_path / "timeline" / "worker-0.jsonl").write_text("")
    assert write_timeline(tmp_path, []) is None
    assert not (tmp_path / "timeline.png").exists()
    assert not (tmp_path / "timeline.csv").exists()
