"""What a client spent its time on: phase spans, their JSON lines, and their totals per client.

A worker given a timeline file appends one JSON object per line as each phase ends:

    {"client_id": "3", "round": 2, "phase": "training", "start": 1765.0, "end": 1767.5}

`start` and `end` are wall-clock seconds (time.time()), so the files of several processes
line up. The phases, in the order a client goes through them:

    training    local training of `round`, the simulated slowdown included, until the
                update is ready
    uploading   encoding and posting the update of `round`, until the server's answer
    waiting     after its post, until the next round reaches the client
    idle        polling while not selected; `round` is the last round the client saw

The gaps between spans are the rest: loading the model, waiting for a training slot,
registering, a simulated crash's time away.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "PHASES",
    "ClientTotals",
    "Phase",
    "PhaseSpan",
    "client_order",
    "phase_totals",
    "read_spans",
    "read_timeline_dir",
]

Phase = Literal["training", "uploading", "waiting", "idle"]
PHASES: tuple[Phase, ...] = get_args(Phase)


@dataclass(frozen=True)
class PhaseSpan:
    """One phase of one client: from `start` to `end`, wall-clock seconds."""

    client_id: str
    round: int
    phase: Phase
    start: float
    end: float

    @property
    def seconds(self) -> float:
        """Return how long the phase lasted."""
        return self.end - self.start

    def line(self) -> str:
        """Return the span as one JSON line (with its newline)."""
        fields = {"client_id": self.client_id, "round": self.round, "phase": self.phase}
        return json.dumps(fields | {"start": self.start, "end": self.end}) + "\n"

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> PhaseSpan:
        """Build a span from a parsed JSON line; raise ValueError if it is not one."""
        phase = record.get("phase")
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        start, end = float(record["start"]), float(record["end"])
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"bad span {start}..{end}")
        return cls(str(record["client_id"]), int(record["round"]), phase, start, end)


@dataclass(frozen=True)
class ClientTotals:
    """One client's seconds in each phase, and its updates posted (uploading spans)."""

    client_id: str
    training_s: float = 0.0
    uploading_s: float = 0.0
    waiting_s: float = 0.0
    idle_s: float = 0.0
    updates: int = 0


def read_spans(lines: Iterable[str]) -> list[PhaseSpan]:
    """Parse JSON lines into spans, skipping lines that are not one (a killed writer's last)."""
    spans = []
    for line in lines:
        if not line.strip():
            continue
        try:
            spans.append(PhaseSpan.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return spans


def read_timeline_dir(directory: Path) -> list[PhaseSpan]:
    """Read every *.jsonl file of `directory` (none if it is missing), ordered by start."""
    if not directory.is_dir():
        return []
    spans = []
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as lines:
            spans += read_spans(lines)
    return sorted(spans, key=lambda span: (span.start, span.end))


def client_order(client_id: str) -> tuple[int, int, str]:
    """Sort key of client ids: numbers in numeric order first, then the others by name."""
    return (0, int(client_id), "") if client_id.isdigit() else (1, 0, client_id)


def phase_totals(spans: Iterable[PhaseSpan]) -> list[ClientTotals]:
    """Return each client's total seconds per phase and its updates posted, by client id."""
    seconds: dict[str, dict[str, float]] = {}
    updates: dict[str, int] = {}
    for span in spans:
        totals = seconds.setdefault(span.client_id, dict.fromkeys(PHASES, 0.0))
        totals[span.phase] += span.seconds
        updates[span.client_id] = updates.get(span.client_id, 0) + (span.phase == "uploading")
    return [
        ClientTotals(
            client,
            training_s=totals["training"],
            uploading_s=totals["uploading"],
            waiting_s=totals["waiting"],
            idle_s=totals["idle"],
            updates=updates[client],
        )
        for client, totals in sorted(seconds.items(), key=lambda item: client_order(item[0]))
    ]
