"""`python -m aggregator_service`: parse flags, check everything, serve with one uvicorn worker.

Everything that can be wrong before serving (settings, the tokens file, the admin token,
the TLS files, the state dir and its checkpoints, the experiment config) is checked
first: a problem prints one line to stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from aggregator_service.api.app import build_federation, create_app
from aggregator_service.api.auth import Access
from aggregator_service.malloc import cap_malloc_arenas
from aggregator_service.settings import AggregatorSettings
from shared.config import load_config, parse_overrides
from shared.device import resolve_device
from shared.errors import ConfigError, TributaryError

__all__ = ["main"]

PROG = "tributary-aggregator"
log = logging.getLogger("aggregator_service")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; every flag also has a TRIBUTARY_AGG_* variable."""
    # No abbreviations: "--admin-token x" must not be taken for "--admin-token-file x".
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, allow_abbrev=False)
    parser.add_argument("--config", type=Path, help="experiment YAML")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an experiment key, e.g. --set num_rounds=5",
    )
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--max-body-bytes", type=int)
    parser.add_argument(
        "--no-persist-updates",
        dest="persist_updates",
        action="store_false",
        default=None,
        help="do not fsync updates before acknowledging them",
    )
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        default=None,
        help="do not log one line per HTTP request",
    )
    parser.add_argument("--exit-when-finished", action="store_true", default=None)
    parser.add_argument(
        "--malloc-arenas",
        type=int,
        help="cap glibc's malloc arenas (default 2; 0: glibc's own limit; MALLOC_ARENA_MAX wins)",
    )
    parser.add_argument("--log-level")
    parser.add_argument(
        "--eval-device", help="server-side evaluation on auto, cpu (default), cuda or cuda:N"
    )
    _add_security_args(parser)
    return parser.parse_args(argv)


def _add_security_args(parser: argparse.ArgumentParser) -> None:
    security = parser.add_argument_group("security and limits (docs/security.md)")
    security.add_argument(
        "--tokens-file", type=Path, help="'client_id: token' lines; without it, anyone may join"
    )
    security.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the admin token (or env TRIBUTARY_AGG_ADMIN_TOKEN)",
    )
    security.add_argument(
        "--viewer-token-file",
        type=Path,
        help="file holding the read-only viewer token (or env TRIBUTARY_AGG_VIEWER_TOKEN)",
    )
    security.add_argument("--ssl-certfile", type=Path, help="serve HTTPS with this certificate")
    security.add_argument("--ssl-keyfile", type=Path, help="... and this private key")
    security.add_argument(
        "--receive-rate", type=float, help="POST /receive per second per client (0: no limit)"
    )
    security.add_argument("--receive-burst", type=int, help="POST /receive at once per client")
    security.add_argument("--max-concurrent-uploads", type=int, help="bodies held at once")
    security.add_argument("--max-queued-uploads", type=int, help="uploads waiting; more get 503")
    security.add_argument(
        "--upload-queue-timeout-s",
        type=float,
        help="an upload waiting this long for a slot gets 503 (default 30)",
    )
    security.add_argument("--max-long-polls", type=int, help="polls held open; more get 503")
    security.add_argument(
        "--body-idle-timeout-s",
        type=float,
        help="an upload from which no byte arrives this long gets 408 (default 60)",
    )
    security.add_argument(
        "--min-upload-rate-bytes-s",
        type=float,
        help="a body slower than this after --upload-grace-s gets 408 (default 65536; 0: none)",
    )
    security.add_argument(
        "--upload-grace-s",
        type=float,
        help="seconds a body may take before --min-upload-rate-bytes-s applies (default 10)",
    )


def prepare(argv: list[str] | None) -> tuple[AggregatorSettings, uvicorn.Server]:
    """Check everything and build the server; raise TributaryError if it cannot start."""
    args = parse_args(argv)
    flags: dict[str, Any] = {
        key: value for key, value in vars(args).items() if value is not None and key != "set"
    }
    try:
        settings = AggregatorSettings(**flags)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cap_malloc_arenas(settings.malloc_arenas)  # before the thread pool and the round loop
    config = load_config(settings.config, parse_overrides(args.set))
    Access.from_settings(settings)  # the tokens, before anything slow
    _check_tls(settings)
    if config.server_eval:
        resolve_device(settings.eval_device)  # a CUDA device that is not here: exit 2 now
    server: uvicorn.Server | None = None

    def stop_when_finished() -> None:
        # Serve the "finished" phase for a grace period first: a worker that is between
        # two requests (backing off, or in a simulated delay) must still get to see it.
        if settings.exit_when_finished and server is not None:
            timer = threading.Timer(settings.finish_grace_s, setattr, (server, "should_exit", True))
            timer.daemon = True
            timer.start()

    federation = build_federation(settings, config, on_finished=stop_when_finished)
    app = create_app(settings, config, federation=federation)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            workers=1,
            http="httptools",
            log_level=settings.log_level.lower(),
            access_log=settings.access_log,
            timeout_graceful_shutdown=10,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
        )
    )
    return settings, server


def main(argv: list[str] | None = None) -> int:
    """Run the aggregator until it is stopped (or finishes, with --exit-when-finished)."""
    try:
        _, server = prepare(argv)
    except (TributaryError, OSError, ValueError) as exc:  # ValueError: e.g. a bad log level
        message = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"{PROG}: {message}", file=sys.stderr)
        return 2
    server.run()
    if not server.started:
        print(f"{PROG}: the server did not start; see the log above", file=sys.stderr)
        return 2
    return 0


def _check_tls(settings: AggregatorSettings) -> None:
    """Load the certificate and key once, so a bad pair fails here with its file names."""
    if settings.ssl_certfile is None or settings.ssl_keyfile is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the TLS certificate {settings.ssl_certfile} with the key "
            f"{settings.ssl_keyfile}: {exc}"
        ) from None


def _one_line(exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors()
    )
    return f"invalid settings: {problems}"


if __name__ == "__main__":
    sys.exit(main())
