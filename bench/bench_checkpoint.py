"""Saving the ResNet18 global model as a checkpoint, against the ways it could be written.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python bench/bench_checkpoint.py [--saves 8]

Three writers of the same 44.7 MB state into a state dir under the temp directory, each
`--saves` times, alternating:

- ``RunStore.save_checkpoint``: what the aggregator does after every round (an .npz
  written from the arrays' own memory, fsynced and renamed, its sha256 read back on a
  thread during the fsync, a SQLite row);
- ``numpy write_array``: the same archive written through `numpy.lib.format.write_array`
  (a `tobytes()` copy of each tensor), then the file read back for its sha256 (how
  checkpoints were saved before);
- ``raw fsync write``: the tensors' bytes written to one file and fsynced, nothing else.

Per save: wall and CPU time of the calling thread (median and best) and the process's
CPU time, which includes the hashing thread.
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
from pathlib import Path
from typing import BinaryIO

import numpy as np
from _common import machine_line, markdown_table

from aggregator_service.store import RunStore
from shared.models import init_global_weights

__all__ = ["main"]


def _numpy_npz(file: BinaryIO, weights: Mapping[str, np.ndarray]) -> None:
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in weights.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asarray(array), allow_pickle=False)


def _save_numpy(directory: Path, weights: Mapping[str, np.ndarray], index: int) -> None:
    path = directory / f"numpy-{index}.npz"
    with open(path, "wb") as file:
        _numpy_npz(file, weights)
        file.flush()
        os.fsync(file.fileno())
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    path.unlink()


def _save_raw(directory: Path, weights: Mapping[str, np.ndarray], index: int) -> None:
    path = directory / f"raw-{index}.bin"
    with open(path, "wb") as file:
        for array in weights.values():
            file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        file.flush()
        os.fsync(file.fileno())
    path.unlink()


def _timed(save: Callable[[int], None], index: int) -> tuple[float, float, float]:
    start, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
    save(index)
    return (
        time.perf_counter() - start,
        time.thread_time() - thread,
        time.process_time() - process,
    )


def main(argv: list[str] | None = None) -> int:
    """Time the three writers side by side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--saves", type=int, default=8)
    args = parser.parse_args(argv)
    weights = init_global_weights("resnet18", seed=0, in_channels=3, num_classes=10, image_size=32)
    nbytes = sum(array.nbytes for array in weights.values())
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        directory = Path(tmp)
        store = RunStore(directory / "state")
        writers: dict[str, Callable[[int], None]] = {
            "RunStore.save_checkpoint": lambda i: store.save_checkpoint(i + 1, weights),
            "numpy write_array + sha256 read back": lambda i: _save_numpy(directory, weights, i),
            "raw fsync write": lambda i: _save_raw(directory, weights, i),
        }
        times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in writers}
        for index in range(args.saves):
            for name, save in writers.items():
                times[name].append(_timed(save, index))
        store.close()
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
    print(machine_line())
    print(f"{nbytes:,} bytes of tensors, {args.saves} saves per writer, alternating")
    header = ["writer", "wall ms median", "wall ms best", "thread CPU ms median"]
    header.append("process CPU ms median")
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
