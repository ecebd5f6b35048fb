"""Saving and loading the ResNet18 global model as a checkpoint, against other ways.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python bench/bench_checkpoint.py [--saves 8]

Three writers of the same 44.7 MB state into a state dir under the temp directory, each
`--saves` times, alternating:

- ``RunStore.save_checkpoint``: what the aggregator does after every round (a safetensors
  file written from the arrays' own memory, fsynced and renamed, its sha256 read back on
  a thread during the fsync, a SQLite row);
- ``npz through write_atomic``: the .npz archive checkpoints were before (zip members
  written from the arrays' memory, with the zip format's CRC-32 of every member) through
  the same atomic write and sha256 thread;
- ``raw fsync write``: the tensors' bytes written to one file and fsynced, nothing else.

Per save: wall and CPU time of the calling thread (median and best) and the process's
CPU time, which includes the hashing thread. Then loading, as a restarted aggregator
does (sha256 checked against the recorded one, tensors built): the newest safetensors
checkpoint by ``RunStore.latest_checkpoint``, and the .npz file by a streamed sha256
plus `files.read_npz` (how it was loaded before), alternating, `--saves` times each.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import BinaryIO

import numpy as np
from _common import machine_line, markdown_table, resnet18_weights

from aggregator_service.store import files
from aggregator_service.store.run_store import RunStore

__all__ = ["main"]


def _write_npz(file: BinaryIO, weights: Mapping[str, np.ndarray]) -> None:
    """The .npz writer of earlier checkpoints: members straight from the arrays' memory."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in weights.items():
            array = np.asarray(value, order="C")
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                header = np.lib.format.header_data_from_array_1_0(array)
                np.lib.format.write_array_header_2_0(entry, header)
                entry.write(array.reshape(-1).view(np.uint8).data)


def _save_npz(path: Path, weights: Mapping[str, np.ndarray], hashing: futures.Executor) -> str:
    return files.write_atomic(path, lambda file: _write_npz(file, weights), hashing)


def _load_npz(path: Path, digest: str) -> dict[str, np.ndarray]:
    """How .npz checkpoints were loaded: a streamed sha256 of the file, then the archive."""
    sha256 = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            sha256.update(chunk)
    if sha256.hexdigest() != digest:
        raise RuntimeError(f"{path} changed")
    return files.read_npz(path)


def _save_raw(directory: Path, weights: Mapping[str, np.ndarray], index: int) -> None:
    path = directory / f"raw-{index}.bin"
    with open(path, "wb") as file:
        for array in weights.values():
            file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        file.flush()
        os.fsync(file.fileno())
    path.unlink()


def _timed(action: Callable[[int], object], index: int) -> tuple[float, float, float]:
    start, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
    action(index)
    return (
        time.perf_counter() - start,
        time.thread_time() - thread,
        time.process_time() - process,
    )


def _rows(times: Mapping[str, list[tuple[float, float, float]]]) -> list[list[str]]:
    rows = []
    for name, samples in times.items():
        wall, thread, process = (list(column) for column in zip(*samples, strict=True))
        rows.append(
            [
                name,
                f"{statistics.median(wall) * 1e3:.1f}",
                f"{min(wall) * 1e3:.1f}",
                f"{statistics.median(thread) * 1e3:.1f}",
                f"{statistics.median(process) * 1e3:.1f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Time the three writers, then the two loaders, side by side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--saves", type=int, default=8)
    args = parser.parse_args(argv)
    weights = resnet18_weights()
    nbytes = sum(array.nbytes for array in weights.values())
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        directory = Path(tmp)
        npz_path = directory / "round.npz"
        with RunStore(directory / "state") as store, futures.ThreadPoolExecutor(4) as hashing:
            writers: dict[str, Callable[[int], object]] = {
                "RunStore.save_checkpoint": lambda i: store.save_checkpoint(i + 1, weights),
                "npz through write_atomic": lambda i: _save_npz(npz_path, weights, hashing),
                "raw fsync write": lambda i: _save_raw(directory, weights, i),
            }
            saves = _alternate(writers, args.saves)
            npz_digest = _save_npz(npz_path, weights, hashing)
            loaders: dict[str, Callable[[int], object]] = {
                "RunStore.latest_checkpoint": lambda i: store.latest_checkpoint(),
                "npz: streamed sha256 + read_npz": lambda i: _load_npz(npz_path, npz_digest),
            }
            loads = _alternate(loaders, args.saves)
    print(machine_line())
    print(f"{nbytes:,} bytes of tensors, {args.saves} saves and loads each, alternating")
    header = ["writer", "wall ms median", "wall ms best", "thread CPU ms median"]
    header.append("process CPU ms median")
    print(markdown_table(header, _rows(saves)))
    print(markdown_table(["loader", *header[1:]], _rows(loads)))
    return 0


def _alternate(
    actions: Mapping[str, Callable[[int], object]], repeats: int
) -> dict[str, list[tuple[float, float, float]]]:
    """Time every action `repeats` times, taking turns."""
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in actions}
    for index in range(repeats):
        for name, action in actions.items():
            times[name].append(_timed(action, index))
    return times


if __name__ == "__main__":
    sys.exit(main())
