"""Measure the update encodings of shared/compression on a ResNet18-sized delta.

The delta has the float32 tensors of torchvision's ResNet18 (ImageNet stem, 1000
classes: parameters and BatchNorm running statistics, 11.7 M values, 46.8 MB), normal
with std 1e-3 like an update. Each encoding is applied as a client would (`plan`: tensors
under 1024 elements stay plain). Throughput is counted in float32 input bytes of the whole
delta, best of `--repeats` runs, beside a plain memory copy measured in the same run:

- encode: `encode_update`; decode: `decode_update` of the received message to float32;
- accumulate: `accumulate_into` of every tensor into float64 sums, as an aggregator would;
- ratio: float32 message bytes / compressed message bytes (shared/wire.py messages);
- rel. L2: ||x - decode(encode(x))|| / ||x|| over the whole delta.

    .venv/bin/python bench/bench_codecs.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from bench_wire import time_all

from shared.compression import (
    CompressionSpec,
    accumulate_into,
    decode_update,
    encode_update,
)
from shared.wire import decode_message, encode_message, spec_of

__all__ = ["ENCODINGS", "main", "resnet18_shapes"]

SEED = 0
STD = 1e-3
ENCODINGS: dict[str, CompressionSpec] = {
    "f16": CompressionSpec(encoding="f16"),
    "bf16": CompressionSpec(encoding="bf16"),
    "q8 absmax": CompressionSpec(encoding="q8"),
    "q8 minmax": CompressionSpec(encoding="q8", scheme="minmax"),
    "q8 absmax stochastic": CompressionSpec(encoding="q8", rounding="stochastic"),
    "q4 absmax": CompressionSpec(encoding="q4"),
    "q4 minmax": CompressionSpec(encoding="q4", scheme="minmax"),
    "q4 absmax, block 64": CompressionSpec(encoding="q4", block_size=64),
    "topk 10%": CompressionSpec(encoding="topk", fraction=0.1),
    "topk 1%": CompressionSpec(encoding="topk", fraction=0.01),
    "topk 1%, q8 values": CompressionSpec(encoding="topk", fraction=0.01, values="q8"),
}


def resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """Return the float32 tensors of torchvision's resnet18() state_dict, in its order."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    inplanes = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            cin = inplanes if block == 0 else planes
            shapes[f"{prefix}.conv1.weight"] = (planes, cin, 3, 3)
            shapes.update(_bn(f"{prefix}.bn1", planes))
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            shapes.update(_bn(f"{prefix}.bn2", planes))
            if cin != planes:
                shapes[f"{prefix}.downsample.0.weight"] = (planes, cin, 1, 1)
                shapes.update(_bn(f"{prefix}.downsample.1", planes))
        inplanes = planes
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    """BatchNorm's float32 tensors (its int64 num_batches_tracked is never compressed)."""
    names = ("weight", "bias", "running_mean", "running_var")
    return {f"{prefix}.{name}": (channels,) for name in names}


def build_delta() -> dict[str, np.ndarray]:
    """Return a seeded normal delta (std 1e-3) of every float32 tensor of ResNet18."""
    rng = np.random.default_rng(SEED)
    return {
        name: (rng.standard_normal(shape, np.float32) * np.float32(STD))
        for name, shape in resnet18_shapes().items()
    }


def best_seconds(operations: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Return each operation's best time of `repeats` (bench_wire's interleaved timing)."""
    return {name: timing.best for name, timing in time_all(operations, repeats).items()}


def copy_operations(delta: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    """The baselines: np.copyto of every tensor into a warm buffer, and float64 sums += delta."""
    warm = {name: np.zeros_like(a) for name, a in delta.items()}
    sums = {name: np.zeros(a.shape) for name, a in delta.items()}

    def copy() -> None:
        for name, array in delta.items():
            np.copyto(warm[name], array)

    def add() -> None:
        for name, array in delta.items():
            np.add(sums[name], array, out=sums[name])

    return {"copy": copy, "add": add}


def codec_operations(
    delta: dict[str, np.ndarray], spec: CompressionSpec
) -> tuple[dict[str, Callable[[], Any]], bytes]:
    """Encode, decode and accumulate operations of one encoding, and its message."""
    specs = spec_of(delta)
    update = encode_update(delta, spec, np.random.default_rng(SEED))
    payload = encode_message({"protocol": 2, "weights": update})
    received = decode_message(payload)["weights"]
    sums = {name: np.zeros(a.shape) for name, a in delta.items()}

    def accumulate() -> None:
        for name, obj in received.items():
            accumulate_into(sums[name], obj, 0.5, name=name)

    operations = {
        "encode": lambda: encode_update(delta, spec, np.random.default_rng(SEED)),
        "decode": lambda: decode_update(received, specs),
        "accumulate": accumulate,
    }
    return operations, payload


def relative_error(delta: dict[str, np.ndarray], payload: bytes) -> float:
    """Return ||x - x'|| / ||x|| over the whole delta, x' decoded from the payload."""
    decoded = decode_update(decode_message(payload)["weights"], spec_of(delta))
    error = sum(float(np.sum((decoded[n].astype(np.float64) - a) ** 2)) for n, a in delta.items())
    norm = sum(float(np.sum(a.astype(np.float64) ** 2)) for a in delta.values())
    return float(np.sqrt(error / norm))


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every encoding and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per operation")
    args = parser.parse_args(argv)

    delta = build_delta()
    nbytes = sum(a.nbytes for a in delta.values())
    plain = encode_message({"protocol": 1, "weights": delta})
    machine = f"{os.cpu_count()} logical cores, {cpu_model()}"
    print(f"{machine}, python {platform.python_version()}, numpy {np.__version__}")
    print("load average before the run: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    values = sum(a.size for a in delta.values())
    print(f"delta: {len(delta)} float32 tensors, {values:,} values, {nbytes / 1e6:.1f} MB")
    print(f"best of {args.repeats} runs; GB/s of float32 input bytes\n")

    baseline = best_seconds(copy_operations(delta), args.repeats)
    copy, add = (f"{nbytes / baseline[op] / 1e9:.2f}" for op in ("copy", "add"))
    rows = [
        f"| baseline: np.copyto of the delta | | | {copy} | {copy} | |",
        f"| baseline: float64 sums += float32 delta | | | | | {add} |",
    ]
    for label, spec in ENCODINGS.items():
        operations, payload = codec_operations(delta, spec)
        seconds = best_seconds(operations, args.repeats)
        speeds = [f"{nbytes / seconds[op] / 1e9:.2f}" for op in ("encode", "decode", "accumulate")]
        ratio = len(plain) / len(payload)
        rows.append(
            f"| {label} | {ratio:.2f} | {relative_error(delta, payload):.2e} | "
            + " | ".join(speeds)
            + " |"
        )
    print("| encoding | ratio | rel. L2 error | encode GB/s | decode GB/s | accumulate GB/s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
