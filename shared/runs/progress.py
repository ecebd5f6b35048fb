"""The run's progress, rendered from the aggregator's /status and /history dicts.

Pure functions: they take the JSON the runner polled and return text or rich renderables,
so they are tested without a terminal. `render_view` is the live view (a status block and
a per-round table); `round_line` is the one line per finished round printed when there is
no terminal or with --no-live.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.runs.report import client_epsilons, megabytes, traffic

__all__ = [
    "LinePrinter",
    "LiveView",
    "dp_sgd_lines",
    "format_elapsed",
    "privacy_lines",
    "render_text",
    "render_view",
    "round_line",
    "rounds_table",
    "status_lines",
    "traffic_lines",
]

Row = Mapping[str, Any]
MAX_TABLE_ROWS = 12  # the live table shows the latest rounds; the CSV has all of them


def format_elapsed(seconds: float) -> str:
    """Return seconds as m:ss, or h:mm:ss from one hour on."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if value is not None else "-"


def status_lines(status: Row | None, *, elapsed_s: float) -> list[str]:
    """Return round r/R and phase, updates reported/needed, and the last accuracy and loss."""
    clock = f"elapsed {format_elapsed(elapsed_s)}"
    if status is None:
        return [f"waiting for the aggregator ... {clock}"]
    last = status.get("last_round") or {}
    return [
        f"round {status['round']}/{status['num_rounds']}   phase {status['phase']}   {clock}",
        f"clients: reported {status.get('received', 0)}/{status.get('needed', 0)}, "
        f"registered {status.get('registered_clients', 0)}",
        f"last round: accuracy {_number(last.get('eval_accuracy'))}, "
        f"loss {_number(last.get('eval_loss'))}{_epsilon_text(last)}",
        *privacy_lines(status.get("privacy")),
    ]


def _epsilon_text(row: Row) -> str:
    """Return ", DP-SGD epsilon max E" for a round of DP-SGD clients ("" otherwise)."""
    epsilon = row.get("dp_sgd_epsilon_max")
    return f", DP-SGD epsilon max {epsilon:.3f}" if epsilon is not None else ""


def privacy_lines(privacy: Row | None) -> list[str]:
    """Return DP-FedAvg's line: epsilon so far at delta, the target, the clip norm C."""
    if not privacy:
        return []
    target = privacy.get("target_epsilon")
    budget = f" of target {target:g}" if target is not None else ""
    clip = privacy.get("clip_norm")
    line = (
        f"privacy: epsilon {_number(privacy.get('epsilon'), '.4g')}{budget} at delta "
        f"{privacy.get('delta'):g} after {privacy.get('rounds_accounted', 0)} rounds"
        + (f", clip norm {clip:.4g}" if clip is not None else "")
    )
    stop = privacy.get("budget_stop")
    return [line, f"stopped: {stop['message']}"] if stop and stop.get("message") else [line]


def _times(ratio: Any) -> str:
    """Return a compression ratio as " (12.3x smaller)"; "" when there is none."""
    return f" ({ratio:.1f}x smaller)" if ratio is not None and ratio != 1 else ""


def round_line(row: Row, *, num_rounds: int) -> str:
    """Return the line printed when a round finished (no live view)."""
    participants = row.get("participants") or []
    return (
        f"round {row['round']}/{num_rounds}: {len(participants)} clients, "
        f"{row.get('num_examples', 0)} examples, accuracy {_number(row.get('eval_accuracy'))}, "
        f"eval loss {_number(row.get('eval_loss'))}, "
        f"train loss {_number(row.get('train_loss'))}{_epsilon_text(row)}, "
        f"{megabytes(row.get('bytes_in') or 0):.2f} MB in{_times(row.get('compression_in'))} / "
        f"{megabytes(row.get('bytes_out') or 0):.2f} MB out{_times(row.get('compression_out'))}, "
        f"{_number(row.get('duration_s'), '.1f')} s"
        + (f", epsilon {_number(row['epsilon'], '.4g')}" if "epsilon" in row else "")
        + _staleness_text(row)
    )


def _staleness_text(row: Row) -> str:
    """Return an async version's staleness, ", staleness mean 1.3 max 4"; "" in sync mode."""
    staleness = row.get("staleness")
    if not staleness:
        return ""
    refused = row.get("stale_refused") or 0
    return (
        f", staleness mean {staleness['mean']:.1f} max {staleness['max']}"
        + (f", {refused} refused as too stale" if refused else "")
    )


def traffic_lines(history: Sequence[Row]) -> list[str]:
    """Return the communication cost: MB in/out per round on average and in total."""
    if not history:
        return ["traffic: no round finished"]
    flow = traffic(history)
    lines = [
        f"traffic per round: {flow['mean_mb_in_per_round']:.2f} MB in (client updates), "
        f"{flow['mean_mb_out_per_round']:.2f} MB out (global model) on average",
        f"traffic in total: {flow['total_mb_in']:.2f} MB in, {flow['total_mb_out']:.2f} MB out "
        f"over {len(history)} rounds",
    ]
    ratios = (flow["compression_in"], flow["compression_out"])
    if any(ratio is not None and ratio != 1 for ratio in ratios):
        lines.append(
            f"compression: {flow['total_raw_mb_in']:.2f} MB in, {flow['total_raw_mb_out']:.2f} "
            f"MB out as plain float tensors; sent {_number(ratios[0], '.1f')}x and "
            f"{_number(ratios[1], '.1f')}x smaller"
        )
    return lines


def dp_sgd_lines(history: Sequence[Row], *, per_line: int = 8) -> list[str]:
    """Return each DP-SGD client's epsilon after its last round ([] without DP-SGD)."""
    spent = client_epsilons(history)
    if not spent:
        return []
    deltas = {
        measured.get("dp_delta")
        for row in history
        for measured in (row.get("clients") or {}).values()
        if (measured or {}).get("dp_delta") is not None
    }
    delta = f"delta {deltas.pop():g}" if len(deltas) == 1 else "deltas as set"
    values = list(spent.values())
    lines = [
        f"DP-SGD epsilon per client ({delta}), after its last round: "
        f"min {min(values):.3f}, max {max(values):.3f} over {len(values)} clients"
    ]
    pairs = [f"{client}: {epsilon:.3f}" for client, epsilon in spent.items()]
    for first in range(0, len(pairs), per_line):
        lines.append("  " + ", ".join(pairs[first : first + per_line]))
    return lines


def rounds_table(history: Sequence[Row], *, max_rows: int = MAX_TABLE_ROWS) -> Table:
    """Return a table of the latest `max_rows` finished rounds."""
    shown = list(history)[-max_rows:]
    hidden = len(history) - len(shown)
    caption = f"{hidden} earlier rounds in metrics.csv" if hidden else None
    # No vertical rules, one-space gaps, no "examples" (in metrics.csv): fits 80 columns.
    table = Table(
        title="finished rounds",
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0, 0, 1),
    )
    # DP-SGD runs add the largest client epsilon so far (the column is absent otherwise)
    sample_level = any(row.get("dp_sgd_epsilon_max") is not None for row in shown)
    for name in ("round", "clients", "train loss", "eval loss", "accuracy"):
        table.add_column(name, justify="right", no_wrap=True)
    if sample_level:
        table.add_column("eps max", justify="right", no_wrap=True)
    compressed = any(_times(row.get("compression_in")) for row in shown)
    for name in ("MB in", *(["x in"] if compressed else []), "MB out", "time s"):
        table.add_column(name, justify="right", no_wrap=True)
    private = any("epsilon" in row for row in shown)  # DP-FedAvg: epsilon after each round
    if private:
        table.add_column("epsilon", justify="right", no_wrap=True)
    for row in shown:
        epsilon = [_number(row.get("dp_sgd_epsilon_max"), ".3f")] if sample_level else []
        ratio = [_number(row.get("compression_in"), ".1f")] if compressed else []
        cells = [
            str(row["round"]),
            str(len(row.get("participants") or [])),
            _number(row.get("train_loss")),
            _number(row.get("eval_loss")),
            _number(row.get("eval_accuracy")),
            *epsilon,
            f"{megabytes(row.get('bytes_in') or 0):.2f}",
            *ratio,
            f"{megabytes(row.get('bytes_out') or 0):.2f}",
            _number(row.get("duration_s"), ".1f"),
        ]
        table.add_row(*cells, *([_number(row.get("epsilon"), ".4g")] if private else []))
    return table


def render_view(
    status: Row | None, history: Sequence[Row], *, elapsed_s: float, title: str = "Tributary run"
) -> RenderableType:
    """Return the live view: the status block above the per-round table."""
    lines = status_lines(status, elapsed_s=elapsed_s)
    if history:
        lines += traffic_lines(history)[1:]  # the totals, and the compression if any
    header = Panel(Text("\n".join(lines)), title=title, expand=False)
    return Group(header, rounds_table(history)) if history else header


def render_text(renderable: RenderableType, *, width: int = 120) -> str:
    """Return what `renderable` looks like on a plain terminal `width` columns wide."""
    sink = io.StringIO()
    Console(width=width, file=sink, color_system=None).print(renderable)
    return sink.getvalue()


class LiveView:
    """The live view in a terminal: redrawn on every poll (no refresh thread)."""

    def __init__(self, console: Console, *, title: str) -> None:
        self._title = title
        self._live = Live(console=console, auto_refresh=False)
        self._live.start()

    def update(self, status: Row | None, history: Sequence[Row], *, elapsed_s: float) -> None:
        """Redraw with the latest status and history."""
        view = render_view(status, history, elapsed_s=elapsed_s, title=self._title)
        self._live.update(view, refresh=True)

    def note(self, message: str) -> None:
        """Print a message above the live view."""
        self._live.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        """Stop redrawing; the last view stays on screen."""
        self._live.stop()


class LinePrinter:
    """Without a terminal (or with --no-live): one line per finished round."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._printed = 0

    def update(self, status: Row | None, history: Sequence[Row], *, elapsed_s: float) -> None:
        """Print the rounds that finished since the last update."""
        del elapsed_s
        num_rounds = status["num_rounds"] if status else len(history)
        for row in history[self._printed :]:
            self.note(round_line(row, num_rounds=num_rounds))
        self._printed = max(self._printed, len(history))

    def note(self, message: str) -> None:
        """Print one line."""
        self._console.print(message, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Nothing to tear down."""
