"""Real processes for fault tests: aggregators and workers that tests start, kill and restart.

Every process is started by a `Processes` group, which stops whatever is still running at
the end of the test (SIGTERM, then SIGKILL after a grace period), by PID only. Output goes
to one log file per process in the test's tmp_path, so a failing test can show it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.runs import launch
from shared.runs.launch import Child, free_port
from shared.runs.layout import aggregator_argv

__all__ = [
    "REPO",
    "Proc",
    "Processes",
    "cpu_seconds",
    "damage",
    "free_port",
    "get_json",
    "wait_healthy",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 10.0
WORKER_ENV = {
    # Retry at most 1 s apart once the aggregator is back: outages here last seconds.
    "TRIBUTARY_WORKER_BACKOFF_CAP_S": "1.0",
    "TRIBUTARY_WORKER_BACKOFF_MAX_TIME_S": "120",
}


@dataclass
class Proc(Child):
    """One child process, where its output goes, and (for an aggregator) its URL."""

    url: str = ""

    def alive(self) -> bool:
        """Tell whether the process is still running."""
        return self.poll() is None

    def log(self, tail: int = 4000) -> str:
        """Return the end of the process's output."""
        return self.log_path.read_text(errors="replace")[-tail:]

    def kill(self) -> None:
        """SIGKILL the process (by its PID) and reap it."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(STOP_GRACE_S)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its exit code."""
        return self.process.wait(timeout)


@dataclass
class Processes:
    """Starts aggregator and worker processes; `stop_all` ends every one still running."""

    log_dir: Path
    started: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, command: Sequence[str], **popen: Any) -> Proc:
        """Start `command` with output to log_dir/<name>.log."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen_env = {**os.environ, **popen.pop("env", {})}
            process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=popen_env,
                **popen,
            )
        proc = Proc(name, process, log_path)
        self.started.append(proc)
        return proc

    def aggregator(
        self,
        state_dir: Path,
        *overrides: str,
        port: int | None = None,
        flags: Sequence[str] = (),
        name: str = "aggregator",
        wait: bool = True,
        **popen: Any,
    ) -> Proc:
        """Start `python -m aggregator_service` on `port` (default: a free one)."""
        port = port if port is not None else free_port()
        flags = ["--log-level", "warning", *flags]
        command = aggregator_argv(port=port, state_dir=state_dir, overrides=overrides, flags=flags)
        proc = self.spawn(name, command, **popen)
        proc.url = f"http://127.0.0.1:{port}"
        if wait:
            wait_healthy(proc)
        return proc

    def worker(
        self,
        url: str,
        client_id: str,
        *overrides: str,
        partition_id: int,
        num_partitions: int,
        name: str | None = None,
    ) -> Proc:
        """Start `python -m client_worker` for one client."""
        flags = ["--client-id", client_id, "--partition-id", str(partition_id)]
        return self._worker(url, flags, overrides, num_partitions, name or f"worker-{client_id}")

    def virtual_workers(
        self, url: str, client_ids: str, *overrides: str, num_partitions: int, name: str
    ) -> Proc:
        """Start one worker process running several clients (`--client-ids 1-3`)."""
        flags = ["--client-ids", client_ids]
        return self._worker(url, flags, overrides, num_partitions, name)

    def _worker(
        self,
        url: str,
        flags: Sequence[str],
        overrides: Sequence[str],
        num_partitions: int,
        name: str,
    ) -> Proc:
        command = [sys.executable, "-m", "client_worker", "--server", url, *flags]
        command += ["--num-partitions", str(num_partitions)]
        for item in overrides:
            command += ["--set", item]
        return self.spawn(name, command, env=WORKER_ENV)

    def stop_all(self) -> None:
        """SIGTERM every process still running, then SIGKILL those that do not exit."""
        running = [proc for proc in self.started if proc.alive()]
        for proc in running:
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in running:
            try:
                proc.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()

    def logs(self) -> str:
        """Return the tail of every process's log, for assertion messages."""
        return "\n".join(f"--- {proc.name} (pid {proc.pid})\n{proc.log()}" for proc in self.started)


def wait_healthy(proc: Proc, timeout: float = 60.0) -> None:
    """Wait until the aggregator answers /healthz with 200; fail if it exits first."""
    launch.wait_healthy(proc.url, child=proc, timeout_s=timeout)


def get_json(url: str, path: str) -> Any:
    """GET a JSON document; assert the answer is 200."""
    reply = httpx.get(f"{url}{path}", timeout=10)
    assert reply.status_code == 200, f"GET {path}: {reply.status_code} {reply.text}"
    return reply.json()


def wait_until(
    url: str,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    describe: Callable[[], str] = lambda: "",
) -> dict[str, Any]:
    """Poll /status until `predicate` holds; fail with the last status after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = get_json(url, "/status")
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"timed out; last status {status}\n{describe()}"
        time.sleep(0.05)


def damage(path: Path) -> None:
    """Overwrite 4 KiB in the middle of a file with zeros (same size, other content)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process `pid` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
