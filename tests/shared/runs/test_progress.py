"""The progress view, rendered from hand-made /status and /history dicts."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from shared.runs.progress import (
    LinePrinter,
    format_elapsed,
    render_text,
    render_view,
    round_line,
    rounds_table,
    status_lines,
    traffic_lines,
)


def make_row(server_round: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "round": server_round,
        "attempts": 1,
        "participants": ["0", "1", "2"],
        "num_examples": 1200,
        "train_loss": 0.5,
        "eval_loss": 0.4,
        "eval_accuracy": 0.8,
        "bytes_in": 2_500_000,
        "bytes_out": 5_000_000,
        "duration_s": 1.25,
        "finished_at": 1.0,
    }
    row.update(fields)
    return row


STATUS = {
    "round": 3,
    "num_rounds": 10,
    "phase": "training",
    "registered_clients": 10,
    "selected": [str(k) for k in range(10)],
    "received": 4,
    "needed": 10,
    "last_round": make_row(2, eval_accuracy=0.912, eval_loss=0.2875),
}


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "0:00"), (59.9, "0:59"), (75, "1:15"), (3600, "1:00:00"), (3725, "1:02:05")],
)
def test_format_elapsed(seconds: float, expected: str) -> None:
    assert format_elapsed(seconds) == expected


def test_status_lines_name_round_phase_counts_and_last_metrics() -> None:
    text = "\n".join(status_lines(STATUS, elapsed_s=75))
    for part in ["round 3/10", "phase training", "reported 4/10", "registered 10"]:
        assert part in text
    assert "accuracy 0.9120" in text
    assert "loss 0.2875" in text
    assert "elapsed 1:15" in text


def test_status_lines_before_the_first_round_and_before_the_aggregator() -> None:
    fresh = {"round": 1, "num_rounds": 5, "phase": "waiting", "last_round": None}
    text = "\n".join(status_lines(fresh, elapsed_s=3))
    assert "round 1/5" in text
    assert "phase waiting" in text
    assert "accuracy -" in text
    assert status_lines(None, elapsed_s=0) == ["waiting for the aggregator ... elapsed 0:00"]


def test_round_line_shows_clients_accuracy_and_megabytes() -> None:
    line = round_line(make_row(4, eval_accuracy=0.9345), num_rounds=20)
    assert line.startswith("round 4/20: 3 clients, 1200 examples, accuracy 0.9345")
    # 2,500,000 and 5,000,000 bytes in decimal megabytes
    assert "2.50 MB in / 5.00 MB out" in line
    assert "1.2 s" in line


def test_round_line_without_server_evaluation() -> None:
    line = round_line(make_row(1, eval_accuracy=None, eval_loss=None), num_rounds=2)
    assert "accuracy -" in line
    assert "eval loss -" in line


def test_traffic_lines_give_mean_per_round_and_total() -> None:
    history = [make_row(1, bytes_in=1_000_000), make_row(2, bytes_in=3_000_000)]
    per_round, total = traffic_lines(history)
    assert "2.00 MB in" in per_round  # (1 + 3) / 2
    assert "5.00 MB out" in per_round
    assert "4.00 MB in, 10.00 MB out over 2 rounds" in total
    assert traffic_lines([]) == ["traffic: no round finished"]


def test_render_view_contains_status_and_a_row_per_round() -> None:
    history = [make_row(1, eval_accuracy=0.7531), make_row(2, eval_accuracy=0.912)]
    text = render_text(render_view(STATUS, history, elapsed_s=12, title="demo run"), width=160)
    assert "demo run" in text
    assert "round 3/10" in text
    assert "reported 4/10" in text
    assert "MB in" in text
    assert "0.7531" in text
    assert "0.9120" in text
    assert "5.00 MB in" in text  # total of the two rounds in the status block


def test_render_view_before_any_round_has_no_table() -> None:
    text = render_text(render_view(None, [], elapsed_s=0), width=100)
    assert "waiting for the aggregator" in text
    assert "finished rounds" not in text


def test_rounds_table_fits_an_80_column_terminal() -> None:
    row = make_row(12, participants=[str(k) for k in range(10)], eval_accuracy=0.9234)
    lines = render_text(rounds_table([row]), width=80).splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "accuracy" in lines[1]
    assert "0.9234" in lines[-1]
    assert "…" not in "".join(lines)


def test_rounds_table_keeps_the_latest_rows() -> None:
    history = [make_row(r, eval_accuracy=r / 100) for r in range(1, 21)]
    text = render_text(rounds_table(history, max_rows=5), width=140)
    assert "0.2000" in text  # round 20
    assert "0.1600" in text  # round 16, the fifth from the end
    assert "0.1500" not in text
    assert "15 earlier rounds" in text


def test_line_printer_prints_each_finished_round_once() -> None:
    sink = io.StringIO()
    printer = LinePrinter(Console(file=sink, width=200, color_system=None))
    status = dict(STATUS, num_rounds=3)
    printer.update(status, [make_row(1)], elapsed_s=1)
    printer.update(status, [make_row(1)], elapsed_s=2)
    printer.update(status, [make_row(1), make_row(2)], elapsed_s=3)
    lines = sink.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["round 1/3", "round 2/3"]


def test_compressed_rounds_show_how_much_smaller_the_updates_went() -> None:
    rows = [
        make_row(r, raw_bytes_in=25_000_000, raw_bytes_out=5_000_000, compression_in=10.0)
        for r in (1, 2)
    ]
    line = round_line(rows[0], num_rounds=2)
    assert "2.50 MB in (10.0x smaller) / 5.00 MB out," in line
    lines = traffic_lines(rows)
    assert lines[2] == (
        "compression: 50.00 MB in, 10.00 MB out as plain float tensors; sent 10.0x and 1.0x "
        "smaller"
    )
    table = render_text(rounds_table(rows), width=80)
    assert "x in" in table
    assert "…" not in table
    assert max(len(line.rstrip()) for line in table.splitlines()) <= 80


def test_uncompressed_rounds_say_nothing_of_compression() -> None:
    rows = [make_row(1, raw_bytes_in=2_500_000, compression_in=1.0)]
    assert "smaller" not in round_line(rows[0], num_rounds=1)
    assert len(traffic_lines(rows)) == 2
    assert "x in" not in render_text(rounds_table(rows), width=80)
