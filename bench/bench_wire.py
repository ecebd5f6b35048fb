"""Measure the wire codec on ResNet18's full state against a plain memory copy.

The state is ResNet18 with the 32x32 (CIFAR) stem and 10 classes: parameters and buffers,
float32 and int64, about 44.7 MB. Every figure comes from this run: best and median of
`--repeats` runs, throughput counted in bytes of that state (not of the payload).

    .venv/bin/python bench/bench_wire.py [--repeats 20]

zstandard and lz4 are measured only when importable; they are not project dependencies.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from shared.wire import (
    TensorSpec,
    decode_message,
    decode_weights,
    encode_message,
    spec_of,
    to_float16,
)

__all__ = ["main"]

SEED = 0


class Timing(NamedTuple):
    """Wall-clock seconds of one operation over several runs."""

    best: float
    median: float


def build_state() -> dict[str, np.ndarray]:
    """Return ResNet18's (CIFAR stem, 10 classes) seeded initial state as numpy arrays."""
    try:
        from shared.models import init_global_weights
    except ImportError:
        return _torchvision_state()
    return init_global_weights("resnet18", seed=SEED, in_channels=3, num_classes=10, image_size=32)


def _torchvision_state() -> dict[str, np.ndarray]:
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        model.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    return {key: t.detach().numpy().copy() for key, t in model.state_dict().items()}


def time_all(operations: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """Time each operation `repeats` times, interleaved so that other load hits all alike."""
    for operation in operations.values():  # warm-up; then timed with garbage collection off
        operation()
    times: dict[str, list[float]] = {name: [] for name in operations}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, operation in operations.items():
                start = time.perf_counter()
                operation()
                times[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {name: Timing(min(t), statistics.median(t)) for name, t in times.items()}


def copy_operations(weights: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    """Two single copies of the state's bytes: into a warm buffer, and into a new one."""
    flats = [a.reshape(-1).view(np.uint8) for a in weights.values()]
    total = sum(flat.size for flat in flats)
    warm = np.empty(total, np.uint8)
    warm.fill(0)

    def copy_warm() -> None:
        offset = 0
        for flat in flats:
            np.copyto(warm[offset : offset + flat.size], flat)
            offset += flat.size

    def copy_new() -> bytes:
        return b"".join(flat.data for flat in flats)

    return {"copy into a warm buffer": copy_warm, "copy into a new bytes": copy_new}


def codec_operations(
    weights: dict[str, np.ndarray], spec: dict[str, TensorSpec]
) -> dict[str, Callable[[], Any]]:
    """The codec operations, each on the whole ResNet18 message."""
    message = {"protocol": 1, "weights": weights}
    payload = encode_message(message)
    payload16 = encode_message({"protocol": 1, "weights": to_float16(weights)})

    def decode(data: bytes, *, allow_nonfinite: bool) -> dict[str, np.ndarray]:
        raw = decode_message(data)["weights"]
        return decode_weights(raw, spec=spec, allow_nonfinite=allow_nonfinite)

    return {
        "encode": lambda: encode_message(message),
        "decode (spec, finite check)": lambda: decode(payload, allow_nonfinite=False),
        "decode (spec, allow_nonfinite)": lambda: decode(payload, allow_nonfinite=True),
        "float16: to_float16 + encode": lambda: encode_message(
            {"protocol": 1, "weights": to_float16(weights)}
        ),
        "float16: decode to float32": lambda: decode(payload16, allow_nonfinite=False),
    }


def compressors() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    """Whole-message compressors: zlib level 1 always; zstd and lz4 when importable."""
    found: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "zlib level 1": (lambda data: zlib.compress(data, 1), zlib.decompress),
    }
    try:
        import zstandard
    except ImportError:
        pass
    else:
        for level in (1, 3):
            compressor = zstandard.ZstdCompressor(level=level)
            found[f"zstd level {level}"] = (compressor.compress, zstandard.decompress)
    try:
        import lz4.frame
    except ImportError:
        pass
    else:
        found["lz4 frame"] = (lz4.frame.compress, lz4.frame.decompress)
    return found


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(state_bytes: int, timings: dict[str, Timing]) -> None:
    """Print each timing as milliseconds and GB/s of state bytes."""
    print(f"\n{'operation':34} {'best ms':>9} {'median ms':>10} {'GB/s best':>10} {'GB/s med':>9}")
    for name, timing in timings.items():
        print(
            f"{name:34} {timing.best * 1e3:9.2f} {timing.median * 1e3:10.2f}"
            f" {state_bytes / timing.best / 1e9:10.2f} {state_bytes / timing.median / 1e9:9.2f}"
        )


def print_ratios(timings: dict[str, Timing]) -> None:
    """Print throughput ratios (copy time / operation time) of encode and decode."""
    print("\nthroughput ratio (copy time / operation time), best | median:")
    for op in ("encode", "decode (spec, finite check)"):
        for copy in ("copy into a warm buffer", "copy into a new bytes"):
            best = timings[copy].best / timings[op].best
            median = timings[copy].median / timings[op].median
            print(f"  {op} / {copy}: {best:.2f}x | {median:.2f}x")


def print_compression(payload: bytes, repeats: int) -> None:
    """Print each compressor's ratio, speeds, and the link speed below which it pays."""
    mb = len(payload) / 1e6
    print(f"\nwhole-message compression of the {mb:.1f} MB float32 payload (best of {repeats}):")
    print(
        f"{'compressor':14} {'out MB':>7} {'ratio':>6} {'saved':>6}"
        f" {'comp MB/s':>10} {'decomp MB/s':>12} {'pays below MB/s':>16}"
    )
    for name, (compress, decompress) in compressors().items():
        packed = compress(payload)
        assert decompress(packed) == payload
        timings = time_all(
            {
                "comp": functools.partial(compress, payload),
                "decomp": functools.partial(decompress, packed),
            },
            repeats,
        )
        comp, decomp = timings["comp"].best, timings["decomp"].best
        saved = (len(payload) - len(packed)) / 1e6
        # Sending `saved` fewer MB must win back the time spent compressing and decompressing.
        break_even = saved / (comp + decomp)
        print(
            f"{name:14} {len(packed) / 1e6:7.2f} {mb / (len(packed) / 1e6):6.3f}"
            f" {saved / mb:6.1%} {mb / comp:10.0f} {mb / decomp:12.0f} {break_even:16.1f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per operation")
    parser.add_argument("--compress-repeats", type=int, default=3, help="runs per compressor")
    args = parser.parse_args(argv)

    weights = build_state()
    spec = spec_of(weights)
    state_bytes = sum(a.nbytes for a in weights.values())
    payload = encode_message({"protocol": 1, "weights": weights})
    payload16 = encode_message({"protocol": 1, "weights": to_float16(weights)})
    decoded = decode_weights(decode_message(payload)["weights"], spec=spec)
    assert all(np.array_equal(decoded[k], a) for k, a in weights.items())

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"python {platform.python_version()}, numpy {np.__version__}")
    print("load average before the run: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    dtypes = sorted({a.dtype.name for a in weights.values()})
    print(f"state: {len(weights)} tensors ({', '.join(dtypes)}), {state_bytes:,} bytes")
    print(f"payload: float32 {len(payload):,} bytes, float16 {len(payload16):,} bytes")
    print(f"repeats: {args.repeats} per operation")

    operations = {**copy_operations(weights), **codec_operations(weights, spec)}
    timings = time_all(operations, args.repeats)
    print_table(state_bytes, timings)
    print_ratios(timings)
    print_compression(payload, args.compress_repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
