"""FedAvg's fold of one ResNet18 update into the float64 sums, by block size.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python bench/bench_fold.py [--rounds 8]

`WeightedMean.accumulate` (FedAvg's fold) folds each tensor block by block through one
float64 scratch array (cast the block into it, multiply there, add it to the sum). The
block size trades the scratch's memory (8 bytes x block) against per-block overhead. For
each block size, `--rounds` rounds of 10 updates are folded; the script prints the wall
and process CPU time per update (median and best) and the memory moved per second (4
bytes read from the update, 16 read and written in the sum, per parameter), next to a
plain copy of the same float32 bytes into a warm buffer measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from _common import machine_line, markdown_table, resnet18_weights

import aggregator_service.strategy.mean as strategy

__all__ = ["main"]

BLOCKS = (1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18)


def _fold_times(weights: dict[str, np.ndarray], rounds: int) -> tuple[list[float], list[float]]:
    """Fold 10 updates per round; return the wall and CPU seconds of each."""
    fedavg = strategy.WeightedMean()
    wall: list[float] = []
    cpu: list[float] = []
    for server_round in range(1, rounds + 1):
        fedavg.begin_round(server_round, weights)
        for _ in range(10):
            start, start_cpu = time.perf_counter(), time.process_time()
            fedavg.accumulate(weights, 30)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        fedavg.finalize()
    return wall, cpu


def _copy_seconds(weights: dict[str, np.ndarray], repeats: int) -> float:
    """Return the best time to copy every tensor into a warm buffer of the same size."""
    flat = [w.reshape(-1).view(np.uint8) for w in weights.values()]
    target = np.empty(sum(a.size for a in flat), np.uint8)
    best = float("inf")
    for _ in range(repeats):
        start, offset = time.perf_counter(), 0
        for array in flat:
            target[offset : offset + array.size] = array
            offset += array.size
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    """Print fold times per block size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    weights = resnet18_weights()
    params = sum(w.size for w in weights.values() if w.dtype.kind == "f")
    moved = params * (4 + 16)
    copy_s = _copy_seconds(weights, 20)
    rows = []
    for block in BLOCKS:
        strategy._BLOCK = block  # the module constant WeightedMean reads at each fold
        wall, cpu = _fold_times(weights, args.rounds)
        rows.append(
            [
                f"{block:,}",
                f"{8 * block / 1024:.0f}",
                f"{statistics.median(wall) * 1e3:.1f}",
                f"{min(wall) * 1e3:.1f}",
                f"{statistics.median(cpu) * 1e3:.1f}",
                f"{moved / statistics.median(wall) / 1e9:.1f}",
            ]
        )
    print(machine_line())
    print(
        f"{params:,} float parameters; plain copy of their bytes into a warm buffer: "
        f"{copy_s * 1e3:.1f} ms ({params * 4 / copy_s / 1e9:.1f} GB/s)"
    )
    header = ["block (elements)", "scratch KiB", "wall ms median", "wall ms best"]
    header += ["CPU ms median", "GB/s moved (median)"]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
