"""The processes of a local run: their command lines, environment, and how clients are spread.

By default every client is its own worker process (what `make demo` runs). With
``--worker-processes N`` smaller than the number of clients, the clients are split into N
contiguous ranges and each range runs as the virtual clients of one process
(``--client-ids a-b``), whose ``--train-slots`` bound how many of them train at once. The
default number of slots gives one training per core over the whole run (cores // N per
process, at least 1), so trainings run back to back instead of time-slicing the cores,
while the other clients download, encode and upload.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError
from shared.runs.launch import LOOPBACK

__all__ = [
    "MAX_PROCESSES_PER_CLIENT",
    "WorkerProcess",
    "aggregator_argv",
    "child_env",
    "client_ranges",
    "default_train_slots",
    "default_worker_processes",
    "describe_layout",
    "usable_cores",
    "virtual_worker_argv",
    "worker_argv",
    "worker_processes",
]


@dataclass(frozen=True)
class WorkerProcess:
    """One worker process of a run: its name (also its log's), clients and command line."""

    name: str
    first: int  # the first client id (= partition id) it runs
    last: int  # the last one, inclusive
    train_slots: int | None  # trainings at once in it; None: a single client, no limit
    argv: list[str]


def child_env(*, worker: bool) -> dict[str, str]:
    """Return the children's environment: unbuffered logs; one torch thread per worker."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if worker:  # ten workers on two cores: more threads each would only fight
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env["TRIBUTARY_WORKER_TORCH_THREADS"] = "1"
        # A stopped worker ends within this (default 10 s), before Fleet's SIGKILL.
        env.setdefault("TRIBUTARY_WORKER_STOP_GRACE_S", "3")
    return env


def _flags(**values: object) -> list[str]:
    """Turn keyword arguments into command-line flags: state_dir=x -> ["--state-dir", "x"]."""
    return [
        item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", str(value))
    ]


def aggregator_argv(
    config_path: Path | None = None,
    *,
    port: int,
    state_dir: Path,
    overrides: Sequence[str] = (),
    flags: Sequence[str] = (),
) -> list[str]:
    """Return the aggregator's command line (it serves on 127.0.0.1 only).

    `overrides` are ``--set key=value`` items and `flags` further options (tests and
    benchmarks). Without the access log: the runner shows progress itself, and a line per
    request (the runner and every worker poll) would bury the aggregator's own log lines.
    """
    argv = [sys.executable, "-m", "aggregator_service"]
    if config_path is not None:
        argv += _flags(config=config_path)
    argv += [*_flags(host=LOOPBACK, port=port, state_dir=state_dir), "--no-access-log", *flags]
    for item in overrides:
        argv += ["--set", item]
    return argv


def worker_argv(
    config_path: Path,
    *,
    url: str,
    partition_id: int,
    num_partitions: int,
    timeline_file: Path | None = None,
) -> list[str]:
    """Return the command line of the worker that trains partition `partition_id`."""
    flags = _flags(server=url, client_id=partition_id, partition_id=partition_id)
    flags += _flags(num_partitions=num_partitions, config=config_path)
    flags += _flags(timeline_file=timeline_file) if timeline_file is not None else []
    return [sys.executable, "-m", "client_worker", *flags]


def virtual_worker_argv(
    config_path: Path,
    *,
    url: str,
    first: int,
    last: int,
    num_partitions: int,
    train_slots: int,
    timeline_file: Path | None = None,
) -> list[str]:
    """Return the command line of one process running clients first..last as virtual clients."""
    flags = _flags(server=url, client_ids=f"{first}-{last}", train_slots=train_slots)
    flags += _flags(num_partitions=num_partitions, config=config_path)
    flags += _flags(timeline_file=timeline_file) if timeline_file is not None else []
    return [sys.executable, "-m", "client_worker", *flags]


def client_ranges(num_clients: int, num_processes: int) -> list[tuple[int, int]]:
    """Split clients 0..num_clients-1 into contiguous inclusive ranges differing by <= 1."""
    if num_clients < 1 or not 1 <= num_processes <= num_clients:
        raise ConfigError(
            f"cannot spread {num_clients} clients over {num_processes} worker processes; "
            "use between 1 and the number of clients"
        )
    size, extra = divmod(num_clients, num_processes)
    ranges, first = [], 0
    for index in range(num_processes):
        count = size + (1 if index < extra else 0)  # the first `extra` ranges take one more
        ranges.append((first, first + count - 1))
        first += count
    return ranges


def usable_cores() -> int:
    """Return the number of cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


MAX_PROCESSES_PER_CLIENT = 32  # beyond this many clients, virtual clients by default


def default_worker_processes(num_clients: int, *, cores: int | None = None) -> int | None:
    """Return None (one process per client) up to 32 clients, else one process per core.

    A hundred processes each importing torch would take minutes on a small machine.
    """
    if num_clients <= MAX_PROCESSES_PER_CLIENT:
        return None
    return cores if cores is not None else usable_cores()


def default_train_slots(num_processes: int, *, cores: int | None = None) -> int:
    """Return the trainings at once per process for one training per core: cores // N, >= 1."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // num_processes)


def worker_processes(
    config_path: Path,
    *,
    url: str,
    num_clients: int,
    num_processes: int | None = None,
    train_slots: int | None = None,
    timeline_dir: Path | None = None,
) -> list[WorkerProcess]:
    """Return every worker process of a run: one per client, or `num_processes` groups.

    `num_processes` None (or at least `num_clients`) starts one process per client;
    `train_slots` None gives a grouped process `default_train_slots(num_processes)`;
    with `timeline_dir`, each process records its clients' phases in <its name>.jsonl there.
    """
    if train_slots is not None and train_slots < 1:
        raise ConfigError(f"train_slots must be at least 1; got {train_slots}")
    if num_processes is None or num_processes >= num_clients:
        return [
            WorkerProcess(
                f"worker-{k}",
                k,
                k,
                None,
                worker_argv(
                    config_path,
                    url=url,
                    partition_id=k,
                    num_partitions=num_clients,
                    timeline_file=_timeline_file(timeline_dir, f"worker-{k}"),
                ),
            )
            for k in range(num_clients)
        ]
    slots = train_slots if train_slots is not None else default_train_slots(num_processes)
    named = [
        (f"worker-{first}" if first == last else f"worker-{first}-{last}", first, last)
        for first, last in client_ranges(num_clients, num_processes)
    ]
    return [
        WorkerProcess(
            name,
            first,
            last,
            slots,
            virtual_worker_argv(
                config_path,
                url=url,
                first=first,
                last=last,
                num_partitions=num_clients,
                train_slots=slots,
                timeline_file=_timeline_file(timeline_dir, name),
            ),
        )
        for name, first, last in named
    ]


def _timeline_file(timeline_dir: Path | None, name: str) -> Path | None:
    return timeline_dir / f"{name}.jsonl" if timeline_dir is not None else None


def describe_layout(layout: list[WorkerProcess]) -> str:
    """Return one line saying how the clients are spread over worker processes."""
    if all(worker.train_slots is None for worker in layout):
        return f"workers: {len(layout)} processes, one per client"
    slots = layout[0].train_slots
    ranges = ", ".join(f"{w.first}-{w.last}" for w in layout)
    return (
        f"workers: {len(layout)} processes of virtual clients ({ranges}), "
        f"at most {slots} training at once in each"
    )
