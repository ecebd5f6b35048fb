"""The run folder's timeline: each client's phases over wall-clock time, drawn and totalled.

Every worker process of a local run appends its clients' phases to timeline/<process>.jsonl
(`shared.timeline` says what the phases are). At the end the runner writes

    timeline.png    one lane per client, a bar per phase (training, uploading, waiting,
                    idle), coloured and hatched, with the rounds' ends as dotted lines
    timeline.csv    per client: training_s, uploading_s, waiting_s, idle_s, updates

A benchmark reads the totals back with `read_timeline_totals(run_dir)`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from shared.timeline import (
    PHASES,
    ClientTotals,
    Phase,
    PhaseSpan,
    client_order,
    phase_totals,
    read_timeline_dir,
)

__all__ = [
    "PHASE_STYLES",
    "TIMELINE_CSV_FIELDS",
    "TimelinePaths",
    "lane_labels",
    "plot_timeline",
    "read_timeline_totals",
    "round_ends",
    "write_timeline",
    "write_timeline_csv",
]

Row = Mapping[str, Any]

TIMELINE_CSV_FIELDS = tuple(field.name for field in fields(ClientTotals))
# (face colour, hatch): dark, middle, light and lighter in grey too, and hatched while the
# bars are few enough to be drawn fast (hatching is slow in Agg) and wide enough to show it.
PHASE_STYLES: dict[Phase, tuple[str, str]] = {
    "training": ("#1f4e99", ""),
    "uploading": ("#ff7f0e", "////"),
    "waiting": ("#bdbdbd", "...."),
    "idle": ("#eeeeee", ""),  # lighter than waiting, darker than the gaps between phases
}
MAX_LABELS = 40  # lane and round labels shown at most; more are thinned out
MAX_HATCHED_SPANS = 2000  # beyond, the phases are told apart by their shades alone
BAR_HEIGHT = 0.8  # of a lane


@dataclass(frozen=True)
class TimelinePaths:
    """The files one timeline report wrote."""

    timeline_png: Path
    timeline_csv: Path


def write_timeline_csv(path: Path, totals: Sequence[ClientTotals]) -> Path:
    """Write one CSV line per client: seconds in each phase and updates posted."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(TIMELINE_CSV_FIELDS)
        writer.writerows(astuple(client) for client in totals)
    return path


def read_timeline_totals(run_dir: Path) -> list[ClientTotals]:
    """Read a run folder's timeline.csv back into per-client totals."""
    with (run_dir / "timeline.csv").open(newline="") as lines:
        return [
            ClientTotals(
                row["client_id"],
                training_s=float(row["training_s"]),
                uploading_s=float(row["uploading_s"]),
                waiting_s=float(row["waiting_s"]),
                idle_s=float(row["idle_s"]),
                updates=int(row["updates"]),
            )
            for row in csv.DictReader(lines)
        ]


def round_ends(history: Sequence[Row]) -> list[tuple[int, float]]:
    """Return (round, finished_at) of the history rows that have a finish time."""
    ends = []
    for row in history:
        finished = row.get("finished_at")
        if isinstance(finished, int | float) and math.isfinite(finished):
            ends.append((int(row["round"]), float(finished)))
    return ends


def lane_labels(clients: Sequence[str], *, most: int = MAX_LABELS) -> list[tuple[int, str]]:
    """Return (lane, client) for the lanes to label: all of them, or every k-th of many."""
    step = max(1, math.ceil(len(clients) / most))
    return [(lane, client) for lane, client in enumerate(clients) if lane % step == 0]


def plot_timeline(
    path: Path,
    spans: Sequence[PhaseSpan],
    *,
    ends: Sequence[tuple[int, float]] = (),
    title: str = "",
) -> Path:
    """Draw one lane per client (client 0 on top), a bar per phase, over seconds of the run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    clients = sorted({span.client_id for span in spans}, key=client_order)
    lane = {client: index for index, client in enumerate(clients)}
    t0 = min((span.start for span in spans), default=0.0)
    many = len(clients) > MAX_LABELS
    hatched = len(spans) <= MAX_HATCHED_SPANS
    figure = Figure(figsize=(12, min(2.0 + 0.3 * len(clients), 14.0)), layout="constrained")
    FigureCanvasAgg(figure)  # no pyplot: no global state, no display needed
    ax = figure.subplots()
    for phase in PHASES:
        colour, hatch = PHASE_STYLES[phase]
        boxes = [_box(span, lane[span.client_id], t0) for span in spans if span.phase == phase]
        ax.add_collection(
            PolyCollection(
                boxes,
                facecolors=colour,
                edgecolors="#404040",
                linewidths=0.0 if many else 0.5,
                hatch=hatch if hatch and hatched else None,
            )
        )
    _mark_rounds(ax, ends, t0)
    end = max((span.end for span in spans), default=t0 + 1.0)
    ax.set_xlim(0.0, max(end - t0, 1e-3) * 1.01)
    ax.set_ylim(len(clients) - 0.5, -0.5)  # client 0 on top
    labelled = lane_labels(clients)
    ax.set_yticks([index for index, _ in labelled], [client for _, client in labelled])
    ax.tick_params(axis="y", labelsize=6 if many else 9, length=0)
    ax.set(xlabel="seconds since the first phase", ylabel="client")
    ax.grid(axis="x", alpha=0.3)
    handles = [
        Patch(facecolor=colour, edgecolor="#404040", hatch=hatch if hatched else None, label=phase)
        for phase, (colour, hatch) in PHASE_STYLES.items()
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="phase")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return path


def _box(span: PhaseSpan, lane: int, t0: float) -> list[tuple[float, float]]:
    """Return the corners of a span's bar in lane `lane`."""
    left, right = span.start - t0, span.end - t0
    top, bottom = lane - BAR_HEIGHT / 2, lane + BAR_HEIGHT / 2
    return [(left, top), (right, top), (right, bottom), (left, bottom)]


def _mark_rounds(ax: Any, ends: Sequence[tuple[int, float]], t0: float) -> None:
    """Draw each round's end as a light dotted line, labelled above the lanes (thinned out)."""
    step = max(1, math.ceil(len(ends) / MAX_LABELS))
    for index, (server_round, finished) in enumerate(ends):
        x = finished - t0
        if x < 0:
            continue
        ax.axvline(x, color="#808080", linestyle=":", linewidth=0.8)
        if index % step == 0:  # x in data, y in axes coordinates: just above the lanes
            label = f"r{server_round}"
            ax.text(
                x,
                1.0,
                label,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
            )


def write_timeline(
    run_dir: Path, history: Sequence[Row], *, title: str = ""
) -> TimelinePaths | None:
    """Write timeline.png and timeline.csv from run_dir/timeline/; None if no phase was."""
    spans = read_timeline_dir(run_dir / "timeline")
    if not spans:
        return None
    return TimelinePaths(
        timeline_png=plot_timeline(
            run_dir / "timeline.png", spans, ends=round_ends(history), title=title
        ),
        timeline_csv=write_timeline_csv(run_dir / "timeline.csv", phase_totals(spans)),
    )
