"""Child processes of a local run: start them, wait until healthy, notice deaths, stop them.

Every child runs in its own session (its own process group), so a signal the runner sends
reaches exactly the processes it started, and a Ctrl-C in the terminal reaches only the
runner, which then stops its children itself: SIGTERM to each child's process group, a
grace period, SIGKILL for whatever remains, and a final wait that reaps them. `Fleet.stop`
runs from the runner's `finally`, from `atexit` as a last resort, and on Linux every child
also asks the kernel for SIGTERM when the runner dies (PR_SET_PDEATHSIG), so not even a
SIGKILLed runner leaves orphans behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

from shared.errors import TributaryError

__all__ = [
    "Child",
    "Fleet",
    "LaunchError",
    "StopSignals",
    "fetch_json",
    "free_port",
    "wait_healthy",
]

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_POLL_S = 0.05


class LaunchError(TributaryError):
    """A child process that could not be started, never became healthy, or died."""


@dataclass
class Child:
    """One process the runner started, with the log file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """Return the process id (also the id of its process group)."""
        return self.process.pid

    def poll(self) -> int | None:
        """Return the exit code (negative: killed by that signal), or None while running."""
        return self.process.poll()

    def log_tail(self, max_lines: int = 20, *, max_bytes: int = 16_384) -> str:
        """Return the last lines of this child's log ('' when there is none)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - max_bytes))
                data = log.read()
        except OSError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-max_lines:])


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on `host` right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _load_prctl() -> Callable[..., int] | None:
    """Return libc's prctl on Linux (resolved in the runner, not in a forked child)."""
    if sys.platform != "linux":
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the runner dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


@dataclass
class Fleet:
    """The children of one run; `stop()` ends every one of them (idempotent)."""

    children: list[Child] = field(default_factory=list)
    grace_s: float = 5.0  # between SIGTERM and SIGKILL

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start `argv` in a new session, its stdout and stderr appended to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            try:
                process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if _PRCTL is not None else None,
                )
            except OSError as exc:
                raise LaunchError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def failed(self, *, must_run: Callable[[Child], bool] = lambda _: False) -> Child | None:
        """Return the first child that exited non-zero (or at all, when `must_run` says so)."""
        for child in self.children:
            code = child.poll()
            if code is not None and (code != 0 or must_run(child)):
                return child
        return None

    def running(self) -> list[Child]:
        """Return the children that have not exited."""
        return [child for child in self.children if child.poll() is None]

    def wait(self, children: Sequence[Child], *, timeout_s: float) -> bool:
        """Wait until every one of `children` exited; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        while any(child.poll() is None for child in children):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    def stop(self, children: Sequence[Child] | None = None) -> None:
        """SIGTERM each child's group, wait `grace_s`, SIGKILL what remains, reap all."""
        targets = list(self.children if children is None else children)
        for child in targets:
            if child.poll() is None:
                _signal_group(child, signal.SIGTERM)
        if not self.wait(targets, timeout_s=self.grace_s):
            for child in targets:
                if child.poll() is None:
                    _signal_group(child, signal.SIGKILL)
        for child in targets:
            child.process.wait()
            # A group outlives its leader when the leader left children of its own.
            _signal_group(child, signal.SIGKILL)

    def __enter__(self) -> Fleet:
        atexit.register(self.stop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()  # if interrupted, the atexit registration stays as the last resort
        atexit.unregister(self.stop)


class StopSignals:
    """Turn SIGINT and SIGTERM into a flag; a second signal raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Install the handlers for the duration of the block, then restore the old ones."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for number, handler in self._previous.items():
                signal.signal(number, handler)


def wait_healthy(
    base_url: str, *, child: Child, timeout_s: float = 90.0, stop: threading.Event | None = None
) -> None:
    """Poll GET /healthz until it answers 200; fail if `child` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(2.0, connect=1.0)) as client:
        while time.monotonic() < deadline:
            code = child.poll()
            if code is not None:
                raise LaunchError(
                    f"{child.name} exited with code {code} before it was healthy; end of "
                    f"{child.log_path}:\n{child.log_tail(15)}"
                )
            if stop is not None and stop.is_set():
                raise LaunchError(f"stopped while waiting for {child.name} to become healthy")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/healthz").status_code == 200:
                    return
            time.sleep(0.2)
    raise LaunchError(
        f"{child.name} did not answer GET {base_url}/healthz within {timeout_s:.0f} s; "
        f"see {child.log_path}"
    )


def fetch_json(client: httpx.Client, path: str) -> Any | None:
    """GET `path` and return its JSON body, or None if the aggregator did not answer it."""
    try:
        response = client.get(path)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None
