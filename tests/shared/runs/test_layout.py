"""How a local run spreads its clients over worker processes, and their command lines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from client_worker.__main__ import build_parser as worker_parser
from shared.errors import ConfigError
from shared.runs.__main__ import main
from shared.runs.cli import build_parser
from shared.runs.layout import (
    client_ranges,
    default_train_slots,
    default_worker_processes,
    describe_layout,
    usable_cores,
    virtual_worker_argv,
    worker_argv,
    worker_processes,
)

URL = "http://127.0.0.1:8123"
CONFIG = Path("c.yaml")


@pytest.mark.parametrize(
    ("num_clients", "num_processes", "expected"),
    [
        (10, 2, [(0, 4), (5, 9)]),
        (10, 3, [(0, 3), (4, 6), (7, 9)]),  # sizes 4, 3, 3
        (4, 4, [(0, 0), (1, 1), (2, 2), (3, 3)]),
        (5, 1, [(0, 4)]),
    ],
)
def test_client_ranges_are_contiguous_and_balanced(
    num_clients: int, num_processes: int, expected: list[tuple[int, int]]
) -> None:
    assert client_ranges(num_clients, num_processes) == expected


@pytest.mark.parametrize(("num_clients", "num_processes"), [(4, 0), (4, 5), (0, 1)])
def test_impossible_ranges_are_refused(num_clients: int, num_processes: int) -> None:
    with pytest.raises(ConfigError, match="cannot spread"):
        client_ranges(num_clients, num_processes)


@pytest.mark.parametrize(
    ("num_processes", "cores", "slots"), [(2, 2, 1), (1, 2, 2), (3, 2, 1), (2, 8, 4), (3, 8, 2)]
)
def test_default_slots_give_one_training_per_core(
    num_processes: int, cores: int, slots: int
) -> None:
    assert default_train_slots(num_processes, cores=cores) == slots


def test_default_slots_use_the_cores_of_this_process() -> None:
    assert usable_cores() >= 1
    assert default_train_slots(1) == usable_cores()


def test_by_default_every_client_is_its_own_process() -> None:
    layout = worker_processes(CONFIG, url=URL, num_clients=3)
    assert [w.name for w in layout] == ["worker-0", "worker-1", "worker-2"]
    assert [w.argv for w in layout] == [
        worker_argv(CONFIG, url=URL, partition_id=k, num_partitions=3) for k in range(3)
    ]
    assert all(w.train_slots is None for w in layout)
    assert describe_layout(layout) == "workers: 3 processes, one per client"
    # as many processes as clients (or more) is the same layout
    assert worker_processes(CONFIG, url=URL, num_clients=3, num_processes=3) == layout
    assert worker_processes(CONFIG, url=URL, num_clients=3, num_processes=7) == layout


def test_beyond_32_clients_the_default_is_one_process_per_core() -> None:
    assert default_worker_processes(32, cores=2) is None  # one process per client
    assert default_worker_processes(33, cores=2) == 2
    assert default_worker_processes(100, cores=8) == 8
    assert default_worker_processes(100) == usable_cores()


def test_grouped_processes_run_client_ranges_as_virtual_clients() -> None:
    layout = worker_processes(CONFIG, url=URL, num_clients=5, num_processes=2, train_slots=1)
    assert [(w.name, w.first, w.last, w.train_slots) for w in layout] == [
        ("worker-0-2", 0, 2, 1),
        ("worker-3-4", 3, 4, 1),
    ]
    assert layout[1].argv[:3] == [sys.executable, "-m", "client_worker"]
    assert " ".join(layout[1].argv[3:]) == (
        f"--server {URL} --client-ids 3-4 --train-slots 1 --num-partitions 5 --config c.yaml"
    )
    assert describe_layout(layout) == (
        "workers: 2 processes of virtual clients (0-2, 3-4), at most 1 training at once in each"
    )


def test_grouped_processes_default_to_one_training_per_core() -> None:
    layout = worker_processes(CONFIG, url=URL, num_clients=8, num_processes=2)
    assert {w.train_slots for w in layout} == {max(1, usable_cores() // 2)}


def test_a_single_client_range_is_named_after_its_client() -> None:
    layout = worker_processes(CONFIG, url=URL, num_clients=4, num_processes=3, train_slots=1)
    assert [w.name for w in layout] == ["worker-0-1", "worker-2", "worker-3"]
    assert "--client-ids 2-2" in " ".join(layout[1].argv)


def test_the_worker_cli_reads_a_virtual_worker_command_line() -> None:
    argv = virtual_worker_argv(CONFIG, url=URL, first=5, last=9, num_partitions=10, train_slots=2)
    args = worker_parser().parse_args(argv[3:])
    assert (args.server_url, args.client_ids, args.train_slots) == (URL, "5-9", 2)
    assert (args.num_partitions, args.config_path) == (10, "c.yaml")


def test_runner_flags_for_worker_processes() -> None:
    args = build_parser().parse_args(["--worker-processes", "2", "--train-slots", "3"])
    assert (args.worker_processes, args.train_slots) == (2, 3)
    assert build_parser().parse_args([]).worker_processes is None  # the demo's layout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--worker-processes", "0"], "must be at least 1"),
        (["--train-slots", "1"], "--train-slots needs --worker-processes"),
    ],
)
def test_bad_worker_process_flags_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--runs-dir", str(tmp_path / "runs"), "--no-live"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_each_worker_process_gets_its_own_timeline_file() -> None:
    timeline = Path("run/timeline")
    alone = worker_processes(CONFIG, url=URL, num_clients=2, timeline_dir=timeline)
    grouped = worker_processes(
        CONFIG, url=URL, num_clients=4, num_processes=2, train_slots=1, timeline_dir=timeline
    )
    for layout in (alone, grouped):
        files = [worker_parser().parse_args(w.argv[3:]).timeline_path for w in layout]
        assert files == [str(timeline / f"{w.name}.jsonl") for w in layout]
    assert "--timeline-file" not in worker_processes(CONFIG, url=URL, num_clients=1)[0].argv
