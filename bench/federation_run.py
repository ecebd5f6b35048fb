"""Running one benchmark federation on loopback and reading what each round cost.

The aggregator and the workers are started with the local runner's own command lines and
environment (``shared/runs``), in one of two layouts:

- ``processes``: one worker process per client (what ``make demo`` runs);
- ``virtual``: one worker process per core, each running its share of the clients as
  virtual clients (``--client-ids a-b``) with ``--train-slots 1``, so that each process
  trains its clients back to back instead of every client time-slicing the cores.

Per round the figures come from ``/history`` (``finished_at``, ``duration_s`` and every
client's ``train_seconds`` and ``train_cpu_seconds``) and from the aggregator's log (when
each round opened). Every process is stopped by its PID in a ``finally``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _common import machine_busy_seconds

from shared.config import ExperimentConfig
from shared.runs.launch import LOOPBACK, Fleet, free_port, wait_healthy
from shared.runs.layout import (
    aggregator_argv,
    child_env,
    client_ranges,
    virtual_worker_argv,
    worker_argv,
)
from shared.runs.report import write_config

__all__ = ["Layout", "RoundFigures", "RunResult", "pure_time", "run_federation"]

POLL_S = 5.0  # longest a watcher's request is held; failures are noticed this often
_OPENED = re.compile(r"round (\d+) opened")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass(frozen=True)
class Layout:
    """How the clients are spread over worker processes (the runner's own split)."""

    name: str
    client_ranges: tuple[tuple[int, int], ...]  # inclusive client-id ranges, one per process
    train_slots: int | None  # trainings at once per process; None: one process per client

    @classmethod
    def processes(cls, num_clients: int) -> Layout:
        """One worker process per client."""
        return cls("processes", tuple((k, k) for k in range(num_clients)), None)

    @classmethod
    def virtual(cls, num_clients: int, num_processes: int) -> Layout:
        """`num_processes` processes of consecutive virtual clients, one training at a time."""
        ranges = tuple(client_ranges(num_clients, num_processes))
        return cls(f"virtual x{num_processes}", ranges, 1)

    def worker_argv(self, config_path: Path, *, url: str, index: int) -> list[str]:
        """Return the command line of worker process `index`."""
        first, last = self.client_ranges[index]
        num_partitions = self.client_ranges[-1][1] + 1
        if self.train_slots is None:
            return worker_argv(
                config_path, url=url, partition_id=first, num_partitions=num_partitions
            )
        return virtual_worker_argv(
            config_path,
            url=url,
            first=first,
            last=last,
            num_partitions=num_partitions,
            train_slots=self.train_slots,
        )


@dataclass(frozen=True)
class RoundFigures:
    """What one measured round cost, in seconds."""

    server_round: int
    wall: float  # previous round aggregated -> this one aggregated
    duration: float  # /history duration_s: round opened -> aggregated
    server_turn: float  # previous aggregate -> "round r opened" (checkpoint, publish)
    train_seconds: list[float]  # each client's training, wall time as it measured it
    train_cpu_seconds: list[float]  # each client's training, CPU time of its thread

    def pure(self, cores: int) -> float:
        """Training CPU time in this round: max(sum over clients / cores, slowest client)."""
        return pure_time(self.train_cpu_seconds, cores)

    def pure_wall(self, layout: Layout) -> float:
        """Training wall time as the clients reported it: max(sum / trainings at once, slowest).

        Trainings at once: every client in ``processes`` (then the slowest client counts),
        the processes times their training slots in ``virtual``.
        """
        at_once = len(layout.client_ranges) * (layout.train_slots or 1)
        return pure_time(self.train_seconds, at_once)


def pure_time(seconds: list[float], at_once: int) -> float:
    """Return the trainings' time in a round: max(sum / trainings at once, slowest one)."""
    return max(sum(seconds) / at_once, max(seconds))


@dataclass(frozen=True)
class RunResult:
    """A federation's measured rounds and the machine's state while they ran."""

    layout: Layout
    rounds: list[RoundFigures]
    window_s: float
    own_cpu_s: float  # aggregator + workers from round 2's opening to the last round's close
    aggregator_cpu_s: float  # the aggregator alone during the measured rounds
    others_cpu_s: float
    load_before: str
    load_after: str


def run_federation(
    config: ExperimentConfig, layout: Layout, *, work_dir: Path, timeout_s: float = 900.0
) -> RunResult:
    """Run one federation to its last round and return its measured rounds (2 and later)."""
    run_dir = work_dir / f"{config.name}-{layout.name.replace(' ', '')}"
    run_dir.mkdir(parents=True)
    config_path = write_config(run_dir, config)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log_dir = run_dir / "logs"
    load_before = _load()
    with Fleet() as fleet:
        aggregator = fleet.start(
            "aggregator",
            aggregator_argv(config_path, port=port, state_dir=run_dir / "state"),
            log_path=log_dir / "aggregator.log",
            env=child_env(worker=False),
        )
        wait_healthy(url, child=aggregator, timeout_s=180.0)
        for index in range(len(layout.client_ranges)):
            fleet.start(
                f"worker-{index}",
                layout.worker_argv(config_path, url=url, index=index),
                log_path=log_dir / f"worker-{index}.log",
                env=child_env(worker=True),
            )
        pids = [child.pid for child in fleet.children]
        history, window = _watch(
            url, fleet, rounds=config.num_rounds, pids=pids, timeout_s=timeout_s
        )
    busy, own, aggregator_cpu, elapsed = window
    return RunResult(
        layout=layout,
        rounds=_figures(history, _opened_at(log_dir / "aggregator.log")),
        window_s=elapsed,
        own_cpu_s=own,
        aggregator_cpu_s=aggregator_cpu,
        others_cpu_s=max(busy - own, 0.0),
        load_before=load_before,
        load_after=_load(),
    )


def _figures(history: list[dict[str, Any]], opened: dict[int, float]) -> list[RoundFigures]:
    rows = {int(row["round"]): row for row in history}
    figures = []
    for server_round in sorted(rows)[1:]:
        row, previous = rows[server_round], rows[server_round - 1]
        clients = list(row["clients"].values())
        figures.append(
            RoundFigures(
                server_round=server_round,
                wall=row["finished_at"] - previous["finished_at"],
                duration=row["duration_s"],
                server_turn=opened[server_round] - previous["finished_at"],
                train_seconds=[c["train_seconds"] for c in clients],
                train_cpu_seconds=[c["train_cpu_seconds"] for c in clients],
            )
        )
    return figures


def _opened_at(log_path: Path) -> dict[int, float]:
    """Return when each round opened, from the aggregator's log."""
    opened: dict[int, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match, stamp = _OPENED.search(line), _STAMP.match(line)
        if match is not None and stamp is not None:
            when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            opened[int(match.group(1))] = when
    return opened


def _process_seconds(pids: list[int]) -> float:
    """Return the CPU seconds the processes `pids` used so far (0 for one already gone)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _watch(
    url: str, fleet: Fleet, *, rounds: int, pids: list[int], timeout_s: float
) -> tuple[list[dict[str, Any]], tuple[float, float, float, float]]:
    """Wait until round `rounds` closed; measure CPU from round 2's opening to then.

    Returns the history and (machine busy, our processes, the aggregator alone, elapsed)
    over that window; `pids[0]` is the aggregator.

    The waiting is the aggregator's own long poll (GET /get_weights with `min_round` and
    `wait`, asking for the JSON summary), so watching costs the run two answers plus one
    per `POLL_S` (each at most one sha256 of a model not yet summarised), where polling
    /status every 100 ms cost it a request per 100 ms.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=POLL_S + 10.0) as client:
        _await_round(client, fleet, 2, deadline)  # round 1 has closed, round 2 is open
        start = _cpu_now(pids)
        _await_round(client, fleet, rounds + 1, deadline)  # only "finished" answers this
        end = _cpu_now(pids)
        history: list[dict[str, Any]] = client.get("/history").json()
    done = max((int(row["round"]) for row in history), default=0)
    if done < rounds:
        raise RuntimeError(f"the federation finished after {done} of {rounds} rounds")
    busy, own, aggregator, elapsed = (b - a for a, b in zip(start, end, strict=True))
    return history, (busy, own, aggregator, elapsed)


def _await_round(client: httpx.Client, fleet: Fleet, min_round: int, deadline: float) -> None:
    """Long-poll until round `min_round` is published or the run finished; watch the fleet."""
    params = {"min_round": min_round, "wait": POLL_S}
    headers = {"Accept": "application/json"}
    while time.monotonic() < deadline:
        response = client.get("/get_weights", params=params, headers=headers)
        response.raise_for_status()
        server_round = int(response.headers["x-tributary-round"])
        if server_round >= min_round or response.headers["x-tributary-phase"] == "finished":
            return
        failed = fleet.failed()
        if failed is not None:
            raise RuntimeError(f"{failed.name} exited early:\n{failed.log_tail(15)}")
    raise TimeoutError(f"the federation did not reach round {min_round} in time")


def _cpu_now(pids: list[int]) -> tuple[float, float, float, float]:
    """Return (machine busy, our processes, the aggregator = pids[0], monotonic) seconds."""
    return (
        machine_busy_seconds(),
        _process_seconds(pids),
        _process_seconds(pids[:1]),
        time.monotonic(),
    )


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
