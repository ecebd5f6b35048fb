"""Aggregator peak memory while one round absorbs N ResNet18 updates (N = 10, 50, 100).

For each N a fresh aggregator process runs one round with min_fit_clients =
min_available_clients = N and fraction_fit 1.0. N - 1 clients register and the server's
resident size is read (before the round opens); the last one registers; once the round is
open and the model was fetched once (its payload built), the resident size is read again
(idle RSS) and the peak counter VmHWM reset to it (Linux clear_refs). Uploads are only
checked and journalled; FedAvg's float64 sums exist only while the round closes, when the
journal is folded in client-id order, so they count in the "closed" figure. Then the N
updates are posted by `--concurrency` client threads (each encodes its own client's body
just before posting, so at most that many bodies live on the client side), and VmHWM is
read: once when the last update was acknowledged (absorbing), once after the round closed
(aggregate, checkpoint, publish). Growth = peak - idle, also as a multiple of the model's
bytes. Run: ``.venv/bin/python bench/bench_memory.py``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import (
    MIB,
    Aggregator,
    encode_update,
    fetch_model,
    machine_line,
    markdown_table,
    post_update,
    read_memory,
    register_clients,
    reset_peak,
    running_aggregator,
    wait_for_status,
)

__all__ = ["Footprint", "absorb_round", "main", "report"]


@dataclass(frozen=True)
class Footprint:
    """Server memory around one round of `clients` updates, in bytes."""

    clients: int
    persist: bool
    model_bytes: int
    before_open: int
    idle: int
    peak_absorbing: int
    peak_round: int
    seconds: float

    def growth(self, peak: int, *, since_open: bool = False) -> float:
        """Growth of `peak` over idle (or over the size before the round opened), x model."""
        base = self.before_open if since_open else self.idle
        return (peak - base) / self.model_bytes


def absorb_round(
    state_dir: Path,
    *,
    clients: int,
    persist: bool,
    concurrency: int,
    env: Mapping[str, str],
) -> Footprint:
    """Run one aggregator through one round of `clients` updates and read its memory."""
    client_ids = [f"client-{i:03d}" for i in range(clients)]
    with running_aggregator(
        state_dir=state_dir,
        num_clients=clients,
        num_rounds=1,
        persist_updates=persist,
        env=env,
    ) as server:
        register_clients(server, client_ids[:-1])
        wait_for_status(server, lambda s: s["registered_clients"] == clients - 1)
        before_open = read_memory(server.pid)["VmRSS"]
        register_clients(server, client_ids[-1:])
        wait_for_status(server, lambda s: s["phase"] == "training")
        weights = fetch_model(server, client_ids[0])
        idle = read_memory(server.pid)["VmRSS"]
        reset_peak(server.pid)
        seconds = _post_all(server, client_ids, weights, concurrency)
        peak_absorbing = read_memory(server.pid)["VmHWM"]
        wait_for_status(server, lambda s: s["phase"] == "finished", timeout=300)
        peak_round = read_memory(server.pid)["VmHWM"]
    model_bytes = sum(a.nbytes for a in weights.values())
    return Footprint(
        clients, persist, model_bytes, before_open, idle, peak_absorbing, peak_round, seconds
    )


def _post_all(
    server: Aggregator,
    client_ids: Sequence[str],
    weights: Mapping[str, np.ndarray],
    concurrency: int,
) -> float:
    """Post one update per client, `concurrency` at a time; return the wall seconds."""

    def post(client_id: str) -> tuple[float, float]:
        upload = post_update(server, encode_update(client_id, 1, dict(weights)))
        return upload.started, upload.finished

    with ThreadPoolExecutor(concurrency) as pool:
        spans = list(pool.map(post, client_ids))
    return max(end for _, end in spans) - min(begin for begin, _ in spans)


def _row(footprint: Footprint) -> list[str]:
    mib = [footprint.before_open, footprint.idle, footprint.peak_absorbing, footprint.peak_round]
    return [
        str(footprint.clients),
        "on" if footprint.persist else "off",
        *(f"{value / MIB:.0f}" for value in mib),
        f"{footprint.growth(footprint.peak_absorbing):.3f}",
        f"{footprint.growth(footprint.peak_round):.3f}",
        f"{footprint.growth(footprint.peak_absorbing, since_open=True):.3f}",
        f"{footprint.growth(footprint.peak_round, since_open=True):.3f}",
        f"{footprint.seconds:.1f}",
    ]


def report(footprints: Sequence[Footprint]) -> str:
    """Render the measured footprints as a Markdown table (MiB, and x model bytes)."""
    header = ["N", "persist", "before open MiB", "idle MiB", "peak absorbing MiB"]
    header += ["peak with close MiB", "growth absorbing x model", "with close x model"]
    header += ["since before open: absorbing x model", "with close x model", "posting s"]
    return markdown_table(header, [_row(f) for f in footprints])


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--server-env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: Sequence[str] | None = None) -> None:
    """Measure each N with persistence on (and off, with --also-off); print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--concurrency", type=int, default=10, help="client threads")
    parser.add_argument("--also-off", action="store_true", help="also without persistence")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the aggregator process, e.g. MALLOC_ARENA_MAX=2",
    )
    parser.add_argument("--work-dir", type=Path, help="where the state dirs go (default: /tmp)")
    args = parser.parse_args(argv)
    env = _parse_env(args.server_env)
    print(f"machine: {machine_line()}", flush=True)
    print(f"server environment: {env or 'as inherited'}", flush=True)
    modes = [True, False] if args.also_off else [True]
    footprints = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir=args.work_dir) as root:
        for persist in modes:
            for clients in args.clients:
                state_dir = Path(root) / f"state-{clients}-{'on' if persist else 'off'}"
                footprint = absorb_round(
                    state_dir,
                    clients=clients,
                    persist=persist,
                    concurrency=args.concurrency,
                    env=env,
                )
                footprints.append(footprint)
                print(report([footprint]).splitlines()[-1], flush=True)
    print(f"model bytes: {footprints[0].model_bytes} ({footprints[0].model_bytes / MIB:.1f} MiB)")
    print(report(footprints))
    print(f"machine after: {machine_line()}")


if __name__ == "__main__":
    main()
