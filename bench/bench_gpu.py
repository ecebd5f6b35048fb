"""Virtual clients per GPU: training throughput and peak memory, sequential against streams.

    .venv/bin/python bench/bench_gpu.py [--device cuda:0] [--clients 1 2 4 8]
        [--examples 2000] [--batch-size 64] [--precision fp32|bf16|fp16] [--repeats 3]

Each of k virtual clients trains its own ResNet18 (CIFAR stem, 10 classes) for one local
epoch on synthetic 3x32x32 data of its own, in a thread of its own, through the worker's
training loop and GPU gate (`client_worker.train.train`, `client_worker.device.GpuGate`):
`sequential` trains them on the GPU one after another, `streams` together, each in a CUDA
stream. Per (k, sharing) the script prints the samples per second over all clients (the
examples trained / the wall time from the first start to the last end; best of
`--repeats`) and the device's peak allocated memory over the k trainings. Without CUDA it
prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import torch
from _common import machine_line, markdown_table

from client_worker.device import MIB, DevicePlan, GpuGate, GpuSharing
from client_worker.train import TrainConfig, derive_seed, seeded_global_rng, train
from shared.device import resolve_device
from shared.models import build_model

__all__ = ["main"]

SHARINGS: tuple[GpuSharing, ...] = ("sequential", "streams")


def _client_data(client: int, examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return seeded synthetic images (N, 3, 32, 32) and labels (N,) on the host."""
    generator = torch.Generator().manual_seed(derive_seed(0, client))
    images = torch.randn(examples, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (examples,), generator=generator)
    return images, labels


def _round(
    plan: DevicePlan, sharing: GpuSharing, clients: int, args: argparse.Namespace
) -> tuple[float, float]:
    """Train `clients` models at once through one gate; return samples/s and peak MiB."""
    data = [_client_data(k, args.examples) for k in range(clients)]
    with seeded_global_rng(0):
        models = [
            build_model("resnet18", in_channels=3, num_classes=10, image_size=32).to(plan.device)
            for _ in range(clients)
        ]
    gate = GpuGate(plan, sharing)
    config = TrainConfig(1, args.batch_size, lr=0.05, momentum=0.9)
    torch.cuda.synchronize(plan.device)
    torch.cuda.reset_peak_memory_stats(plan.device)
    errors: list[BaseException] = []

    def one(k: int) -> None:
        images, labels = data[k]

        def work() -> None:
            train(models[k], images, labels, config, seed=k, plan=plan)

        try:
            gate.run(work)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.cuda.synchronize(plan.device)
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    peak = torch.cuda.max_memory_allocated(plan.device) / MIB
    return clients * args.examples / seconds, peak


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--examples", type=int, default=2000, help="per client")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--data-budget-mb", type=int, default=1024, help="data held on the GPU")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; 0 also when there is no GPU."""
    args = _parse(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available on this machine; nothing to measure")
        return 0
    plan = DevicePlan(resolve_device(args.device), args.precision, args.data_budget_mb * MIB)
    torch.backends.cudnn.benchmark = True
    print(machine_line())
    print(f"GPU: {torch.cuda.get_device_name(plan.device)}, torch {torch.__version__}")
    print(
        f"ResNet18 on 3x32x32, {args.examples} examples per client, batch {args.batch_size}, "
        f"{args.precision}, best of {args.repeats}\n"
    )
    _round(plan, "sequential", 1, args)  # warm-up: cuDNN autotuning, CUDA context
    rows = []
    for clients in args.clients:
        for sharing in SHARINGS:
            runs = [_round(plan, sharing, clients, args) for _ in range(args.repeats)]
            rate = max(r for r, _ in runs)
            peak = max(p for _, p in runs)
            rows.append(
                [str(clients), sharing, f"{rate:,.0f}", f"{peak:,.0f}", f"{peak / clients:,.0f}"]
            )
            torch.cuda.empty_cache()
    header = ["clients", "sharing", "samples/s", "peak MiB", "peak MiB / client"]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
