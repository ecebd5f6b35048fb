"""`python -m aggregator_service`: parse flags, build the app, serve it with one uvicorn worker."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from aggregator_service.app import create_app
from aggregator_service.settings import AggregatorSettings
from shared.config import load_config, parse_overrides
from shared.errors import TributaryError

__all__ = ["main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; every flag also has a TRIBUTARY_AGG_* variable."""
    parser = argparse.ArgumentParser(prog="tributary-aggregator", description=__doc__)
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
    parser.add_argument("--exit-when-finished", action="store_true", default=None)
    parser.add_argument("--log-level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the aggregator until it is stopped (or finishes, with --exit-when-finished)."""
    args = parse_args(argv)
    flags: dict[str, Any] = {
        key: value for key, value in vars(args).items() if value is not None and key != "set"
    }
    try:
        settings = AggregatorSettings(**flags)
        config = load_config(settings.config, parse_overrides(args.set))
    except TributaryError as exc:
        print(f"tributary-aggregator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server: uvicorn.Server | None = None

    def stop_when_finished() -> None:
        if settings.exit_when_finished and server is not None:
            server.should_exit = True

    app = create_app(settings, config, on_finished=stop_when_finished)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            workers=1,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
