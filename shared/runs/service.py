"""One aggregator process on loopback, for as long as a block runs (tests and benchmarks).

`local_aggregator` starts ``python -m aggregator_service`` on a free port with the local
runner's own machinery (launch.py): its own process group, its log in a file, healthy
before the block starts, and stopped by PID at the end (SIGTERM, then SIGKILL), also when
the block fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from shared.runs.launch import LOOPBACK, Child, Fleet, free_port, wait_healthy
from shared.runs.layout import aggregator_argv

__all__ = ["local_aggregator"]


@contextlib.contextmanager
def local_aggregator(
    state_dir: Path,
    *overrides: str,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    log_level: str = "warning",
    timeout_s: float = 90.0,
) -> Iterator[tuple[str, Child]]:
    """Run an aggregator on `state_dir` until the block ends; yield its URL and process.

    `overrides` are ``--set key=value`` items and `flags` further options; `env` is added
    to this process's environment. The log goes to `log_path` (default: beside the state
    dir, named after the port).
    """
    port = free_port()
    argv = aggregator_argv(
        port=port,
        state_dir=state_dir,
        overrides=overrides,
        flags=["--log-level", log_level, *flags],
    )
    log = log_path or state_dir.parent / f"aggregator-{port}.log"
    url = f"http://{LOOPBACK}:{port}"
    with Fleet() as fleet:
        child = fleet.start("aggregator", argv, log_path=log, env={**os.environ, **(env or {})})
        wait_healthy(url, child=child, timeout_s=timeout_s)
        yield url, child
