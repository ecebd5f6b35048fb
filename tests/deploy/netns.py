"""A private test network of Linux network namespaces: one per simulated machine.

A dedicated namespace holds a bridge; every machine is another namespace joined to the
bridge by a veth pair, with one address of TEST_SUBNET. The host's own interfaces and
routes are never touched, and no namespace has a route out of the subnet, so test traffic
stays between the namespaces created here. Names carry the creating process id, so runs do
not clash and the namespaces of a run that was killed can be recognised and removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = ["TEST_SUBNET", "Machine", "TestNetwork", "netns_unavailable_reason"]

TEST_SUBNET = "10.213.0"  # /24, exists only inside the namespaces of a TestNetwork
_PREFIX = "trbt"
_NAME = re.compile(rf"^{_PREFIX}(\d+)x[0-9a-f]{{4}}-")
_COMMAND_TIMEOUT_S = 10.0


def _ip(command: str) -> None:
    """Run `ip COMMAND` (words split at spaces) and fail loudly if it fails."""
    subprocess.run(
        ["ip", *command.split()], check=True, capture_output=True, timeout=_COMMAND_TIMEOUT_S
    )


def netns_unavailable_reason() -> str | None:
    """Return why namespaces cannot be made here (not root, no `ip`, no CAP_NET_ADMIN)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    probe = f"{_PREFIX}{os.getpid()}x{secrets.token_hex(2)}-probe"
    try:
        _ip(f"netns add {probe}")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    try:
        _ip(f"-n {probe} link add probe0 type bridge")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"cannot create links in a namespace (no CAP_NET_ADMIN?): {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def remove_stale_namespaces() -> None:
    """Delete the namespaces left by test runs whose process no longer exists."""
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=10
    )
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _NAME.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@dataclass
class Machine:
    """One simulated machine: a namespace with one address on the test subnet."""

    name: str
    namespace: str
    address: str


@dataclass
class TestNetwork:
    """A bridge namespace plus one namespace per machine; `close()` removes everything."""

    tag: str = field(default_factory=lambda: f"{_PREFIX}{os.getpid()}x{secrets.token_hex(2)}")
    machines: dict[str, Machine] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    __test__ = False  # not a pytest test class, despite the name

    @property
    def bridge_namespace(self) -> str:
        """Return the name of the namespace that holds the bridge."""
        return f"{self.tag}-br"

    def open(self) -> None:
        """Create the bridge namespace and its bridge."""
        remove_stale_namespaces()
        self._add_namespace(self.bridge_namespace)
        _ip(f"-n {self.bridge_namespace} link add br0 type bridge")
        _ip(f"-n {self.bridge_namespace} link set br0 up")

    def add_machine(self, name: str, host: int) -> Machine:
        """Create a machine namespace with address TEST_SUBNET.host/24, joined to the bridge."""
        namespace = f"{self.tag}-{name}"
        self._add_namespace(namespace)
        port = f"v-{name}"[:15]
        bridge = self.bridge_namespace
        _ip(f"-n {bridge} link add {port} type veth peer name eth0 netns {namespace}")
        _ip(f"-n {bridge} link set {port} master br0 up")
        address = f"{TEST_SUBNET}.{host}"
        _ip(f"-n {namespace} addr add {address}/24 dev eth0")
        _ip(f"-n {namespace} link set eth0 up")
        machine = Machine(name=name, namespace=namespace, address=address)
        self.machines[name] = machine
        return machine

    def spawn(
        self,
        machine: Machine,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: IO[bytes],
        lifetime_s: float,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside the machine's namespace; `timeout` ends it after lifetime_s."""
        bounded = ["timeout", "--kill-after=5", f"{lifetime_s:.0f}", *argv]
        process = subprocess.Popen(
            ["ip", "netns", "exec", machine.namespace, *bounded],
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def run(self, machine: Machine, argv: Sequence[str], *, timeout_s: float) -> str:
        """Run a short command inside the machine's namespace and return its stdout."""
        done = subprocess.run(
            ["ip", "netns", "exec", machine.namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        return done.stdout

    def close(self) -> None:
        """Stop the processes started here (by pid), then delete every namespace."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # `timeout` leads its own process group (pgid = its pid): end it with its child.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        remaining = list(reversed(self.namespaces))
        for _ in range(5):
            for namespace in remaining:
                subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
            remaining = [ns for ns in remaining if Path("/run/netns", ns).exists()]
            if not remaining:
                break
            time.sleep(0.5)
        self.namespaces.clear()
        if remaining:
            raise RuntimeError(f"could not delete network namespaces {remaining}")

    def _add_namespace(self, namespace: str) -> None:
        _ip(f"netns add {namespace}")
        self.namespaces.append(namespace)
        _ip(f"-n {namespace} link set lo up")
        # IPv4 only: no IPv6 link-local chatter on the test bridge.
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
            capture_output=True,
            check=False,
            timeout=_COMMAND_TIMEOUT_S,
        )
