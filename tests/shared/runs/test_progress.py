"""The progress view, rendered from hand-made /status and /history dicts."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from shared.runs.progress import (
    LinePrinter,
    format_elapsed,
    dp_sgd_lines,
    privacy_lines,
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


def test_round_line_of_an_async_version_shows_its_staleness() -> None:
    staleness = {"mean": 1.25, "max": 4, "counts": {"0": 2, "1": 1, "4": 1}}
    line = round_line(make_row(7, staleness=staleness, stale_refused=2), num_rounds=40)
    assert line.endswith(", staleness mean 1.2 max 4, 2 refused as too stale")
    assert "staleness" not in round_line(make_row(7), num_rounds=40)


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


def test_dp_sgd_rounds_show_the_largest_client_epsilon_in_80_columns() -> None:
    row = make_row(12, participants=[str(k) for k in range(10)], dp_sgd_epsilon_max=12.3456)
    lines = render_text(rounds_table([row]), width=80).splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "eps max" in lines[1]
    assert "12.346" in lines[-1]
    assert "…" not in "".join(lines)
    assert "DP-SGD epsilon max 12.346" in round_line(row, num_rounds=20)
    status = STATUS | {"last_round": row}
    assert "DP-SGD epsilon max 12.346" in status_lines(status, elapsed_s=1)[2]
    assert "eps max" not in render_text(rounds_table([make_row(1)]), width=80)
    assert "epsilon" not in round_line(make_row(1), num_rounds=2)


def _clients(**epsilons: float) -> dict[str, dict[str, float]]:
    return {c[1:]: {"dp_epsilon": e, "dp_delta": 1e-5} for c, e in epsilons.items()}


def test_dp_sgd_lines_give_each_clients_epsilon_after_its_last_round() -> None:
    history = [
        make_row(1, clients=_clients(c10=1.0, c2=1.5, c1=1.0)),
        make_row(2, clients=_clients(c10=2.0, c1=2.0)),  # client 2 sat this round out
    ]
    assert dp_sgd_lines(history, per_line=2) == [
        "DP-SGD epsilon per client (delta 1e-05), after its last round: "
        "min 1.500, max 2.000 over 3 clients",
        "  1: 2.000, 2: 1.500",
        "  10: 2.000",
    ]
    assert dp_sgd_lines([make_row(1, clients={"0": {"train_loss": 0.5}})]) == []
    assert dp_sgd_lines([]) == []


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


PRIVACY = {
    "epsilon": 3.14159,
    "delta": 1e-5,
    "target_epsilon": 8.0,
    "accountant": "rdp",
    "noise_multiplier": 1.0,
    "clip_norm": 0.75,
    "rounds_accounted": 4,
    "budget_stop": None,
}


def test_status_lines_show_epsilon_of_the_target_and_the_clip_norm() -> None:
    lines = status_lines(STATUS | {"privacy": PRIVACY}, elapsed_s=1)
    assert lines[-1] == (
        "privacy: epsilon 3.142 of target 8 at delta 1e-05 after 4 rounds, clip norm 0.75"
    )
    assert not any("privacy" in line for line in status_lines(STATUS, elapsed_s=1))


def test_privacy_lines_name_the_budget_stop() -> None:
    stop = {"reason": "privacy budget", "message": "privacy budget: epsilon would reach 9"}
    untargeted = PRIVACY | {"target_epsilon": None, "budget_stop": stop}
    line, stopped = privacy_lines(untargeted)
    assert line.startswith("privacy: epsilon 3.142 at delta 1e-05")
    assert stopped == "stopped: privacy budget: epsilon would reach 9"
    assert privacy_lines(None) == []


def test_dp_rounds_show_epsilon_in_the_line_and_the_table() -> None:
    line = round_line(make_row(4, epsilon=1.23456, delta=1e-5), num_rounds=20)
    assert line.endswith("1.2 s, epsilon 1.235")
    assert "epsilon" not in round_line(make_row(4), num_rounds=20)
    row = make_row(12, participants=[str(k) for k in range(100)], epsilon=123.456)
    lines = render_text(rounds_table([row]), width=80).splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert lines[1].rstrip().endswith("epsilon")
    assert lines[-1].rstrip().endswith("123.5")
    assert "epsilon" not in render_text(rounds_table([make_row(1)]), width=80)


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
