"""Command line of the worker: parse flags, then run one client or several virtual ones.

    python -m client_worker --server http://127.0.0.1:8000 --client-id 3 [--config exp.yaml]
    python -m client_worker --server URL --client-ids 0-9 --max-rounds 2
    python -m client_worker --server URL --client-ids 0-4 --train-slots 1
    python -m client_worker --server URL --client-ids 0-7 --device cuda --precision bf16

SIGTERM or SIGINT asks the worker(s) to stop: training is abandoned between two batches,
a post in flight completes (for up to `stop_grace_s` seconds), a client idle in a long
poll is not waited for, and the process exits 0. A second signal exits at once.
Exit codes: 0 done or stopped, 1 the aggregator stayed unreachable, 2 a fatal error (the
server refused the update or the token (401/403), its TLS certificate did not verify, or a
bad config, token file, CA bundle or dataset, or a CUDA device that is not there).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
from pydantic import ValidationError

from client_worker.errors import FatalServerError, ServerUnavailableError
from client_worker.network import parse_clients
from client_worker.settings import WorkerSettings
from client_worker.summary import Activity, WorkerSummary
from client_worker.transport import AggregatorClient
from client_worker.virtual import run_virtual_clients
from client_worker.worker import run_worker
from shared.config import load_config, parse_overrides
from shared.errors import TributaryError

__all__ = ["build_parser", "main"]

_log = logging.getLogger("client_worker")
PROG = "tributary-worker"
IDLE_JOIN_S = 0.5  # after a stop, how long an idle client may take to return by itself


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the worker CLI."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a federated client worker.",
        allow_abbrev=False,  # "--token x" must not be taken for "--token-file x"
    )
    parser.add_argument("--server", dest="server_url", help="aggregator base URL")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--client-id", help="this client's id (default 0)")
    who.add_argument("--client-ids", help="virtual clients in this process, e.g. 0-9 or 0,3-5")
    parser.add_argument("--partition-id", type=int, help="default: the numeric client id")
    parser.add_argument("--num-partitions", type=int, help="default: the config's")
    parser.add_argument("--config", dest="config_path", help="experiment YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an experiment config key (repeatable), e.g. --set partition.alpha=0.3",
    )
    parser.add_argument("--max-rounds", type=int, help="exit after training this many rounds")
    parser.add_argument(
        "--train-slots",
        type=int,
        help="at most this many of the virtual clients train at once (default: no limit)",
    )
    parser.add_argument("--data-dir", help="dataset directory (default: the config's)")
    parser.add_argument("--download", action="store_true", default=None, help="fetch datasets")
    parser.add_argument(
        "--state-dir", help="client algorithms' state, a directory per client (worker-state)"
    )
    parser.add_argument(
        "--token-file",
        help="this client's bearer token, or 'client_id: token' lines (or TRIBUTARY_WORKER_TOKEN)",
    )
    parser.add_argument(
        "--timeline-file",
        dest="timeline_path",
        help="append each client's phases (training, uploading, waiting, idle) to this "
        "JSON-lines file",
    )
    parser.add_argument("--ca-bundle", help="CA certificates (PEM) to verify the aggregator with")
    _add_device_args(parser)
    parser.add_argument("--check", action="store_true", help="GET /healthz once and exit 0/1")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    device = parser.add_argument_group("devices and GPUs (docs/worker.md)")
    device.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    device.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default fp32")
    device.add_argument(
        "--gpu-sharing",
        choices=["sequential", "streams"],
        help="virtual clients on one GPU: one after another (default) or a CUDA stream each",
    )
    device.add_argument(
        "--device-data-budget-mb",
        type=int,
        help="on CUDA, hold a partition up to this size on the device (default 1024)",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the worker CLI and return the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    try:
        settings = WorkerSettings(**_settings_fields(args))
        config = load_config(settings.config_path, parse_overrides(args.overrides))
        client_ids = _parse_client_ids(args.client_ids) if args.client_ids else None
        _check_credentials(settings, client_ids)
        plan = settings.device_plan()  # a CUDA device that is not there fails here
    except (TributaryError, ValidationError) as exc:
        return _fail(2, f"invalid settings: {exc}")
    if args.check:
        return _check(settings)
    torch.set_num_threads(settings.torch_threads)  # once, for every client of the process
    _log.info("training on %s in %s", plan.device, plan.precision)
    stop = threading.Event()
    _install_signal_handlers(stop)

    activity = Activity()

    def work() -> list[WorkerSummary]:
        if client_ids is None:
            return [run_worker(settings, config, stop=stop, activity=activity)]
        return run_virtual_clients(client_ids, settings, config, stop=stop, activity=activity)

    return _run(work, stop, activity, settings.stop_grace_s)


def _settings_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Return the flags that were given, as WorkerSettings fields (the rest: env/defaults)."""
    names = ["server_url", "client_id", "partition_id", "num_partitions", "config_path"]
    names += ["max_rounds", "train_slots", "data_dir", "download", "token_file", "ca_bundle"]
    names += [
        "state_dir",
        "timeline_path",
        "device",
        "precision",
        "gpu_sharing",
        "device_data_budget_mb",
    ]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _parse_client_ids(text: str) -> list[int]:
    ids = parse_clients(text)
    if ids is None or not ids:
        raise TributaryError(f"--client-ids {text!r}: list the ids, e.g. 0-9 or 0,3-5")
    return sorted(ids)


def _check_credentials(settings: WorkerSettings, client_ids: list[int] | None) -> None:
    """Read the token(s) and the CA bundle now, so that a problem exits before any work."""
    settings.ssl_verify()
    for client_id in client_ids or []:
        settings.model_copy(update={"client_id": str(client_id)}).resolved_token()
    if client_ids is None:
        settings.resolved_token()


def _check(settings: WorkerSettings) -> int:
    with AggregatorClient(
        settings.server_url,
        client_id=settings.client_id,
        timeout=settings.http_timeout(),
        token=settings.resolved_token(),
        verify=settings.ssl_verify(),
    ) as client:
        healthy = client.healthy()
    print(f"{settings.server_url}: {'healthy' if healthy else 'unreachable or unhealthy'}")
    return 0 if healthy else 1


def _install_signal_handlers(stop: threading.Event) -> None:
    """Make SIGTERM and SIGINT set `stop`; a second signal exits at once."""

    def handle(signum: int, frame: FrameType | None) -> None:
        del frame
        if stop.is_set():
            raise SystemExit(128 + signum)
        _log.info("received %s: stopping after the current step", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _run(
    work: Callable[[], list[WorkerSummary]],
    stop: threading.Event,
    activity: Activity,
    grace_s: float,
) -> int:
    """Run `work` in a thread so signals stay responsive; map its outcome to an exit code.

    After a stop, a round in progress gets up to `grace_s` seconds to end; a client that
    is only waiting in a long poll is not waited for.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["summaries"] = work()
        except BaseException as exc:  # reported by the main thread below
            outcome["error"] = exc

    runner = threading.Thread(target=target, name="worker", daemon=True)
    runner.start()
    while runner.is_alive() and not stop.is_set():
        runner.join(0.5)
    if runner.is_alive() and not activity.wait_idle(grace_s):
        _log.warning("a round was still in progress %.0f s after the stop; exiting", grace_s)
    runner.join(IDLE_JOIN_S)  # a client that just returned from its poll ends here
    if runner.is_alive():
        _log.info("stopped while waiting for the aggregator")
        for summary in activity.summaries():
            summary.outcome = "stopped" if summary.outcome == "running" else summary.outcome
        outcome.setdefault("summaries", activity.summaries())
    return _report(outcome)


def _report(outcome: dict[str, Any]) -> int:
    error = outcome.get("error")
    if isinstance(error, ServerUnavailableError):
        return _fail(1, f"aggregator unavailable: {error}")
    if isinstance(error, FatalServerError):
        return _fail(2, f"fatal: {error}")
    if isinstance(error, TributaryError):
        return _fail(2, f"fatal: {type(error).__name__}: {error}")
    if error is not None:
        raise error
    for summary in outcome["summaries"]:
        print(summary.line())
    return 0


def _fail(code: int, message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
