"""A Docker engine, the project image and a Compose project, as the container test uses them.

The engine is started only when none answers, only as root, and stopped again by whoever
started it. The image is built by deploy/docker/build-offline.sh (no registry, no index
inside the build; its base image, wheelhouse and layers are kept between runs). A
`ComposeProject` has a name of its own, and `down` removes its containers, networks and
volumes; `leftovers` lists what would remain of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.helpers import DEPLOY

__all__ = ["ComposeProject", "Engine", "build_image", "compose_command", "docker_binary"]

BUILD_SCRIPT = DEPLOY / "docker/build-offline.sh"
ENGINE_START_S = 60.0


def docker_binary() -> str | None:
    """Return the docker CLI, Debian's (which builds with BuildKit by itself) first."""
    debian = Path("/usr/bin/docker")
    return str(debian) if debian.is_file() else shutil.which("docker")


def compose_command(docker: str) -> list[str] | None:
    """Return `docker compose` (Compose v2) if it works, else `docker-compose`, else None."""
    plugin = subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30, check=False
    )
    if plugin.returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone is not None else None


def _answers(docker: str) -> bool:
    done = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


@dataclass
class Engine:
    """The Docker engine: already running, or a dockerd started (and later stopped) here."""

    docker: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> str | None:
        """Make the engine answer; return why it cannot (the reason to skip), or None."""
        if _answers(self.docker):
            return None
        if os.geteuid() != 0:
            return "the Docker engine does not answer and starting it needs root"
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            return "the Docker engine cannot start: dockerd is not installed (make docker-tools)"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + ENGINE_START_S
        while time.monotonic() < deadline and self.process.poll() is None:
            if _answers(self.docker):
                return None
            time.sleep(1)
        self.stop()
        tail = self.log.read_text(errors="replace").splitlines()[-5:]
        return "the Docker engine cannot start: " + " | ".join(tail)

    def stop(self) -> None:
        """Stop the dockerd started here, if any (its containers are gone by then)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def build_image(docker: str, image: str, *, timeout_s: float) -> float:
    """Build the base image, wheelhouse and project image offline; return the seconds taken."""
    start = time.monotonic()
    env = {**os.environ, "DOCKER": docker, "IMAGE": image}
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "all"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"build-offline.sh all failed:\n{done.stderr[-4000:]}")
    return time.monotonic() - start


@dataclass
class ComposeProject:
    """One Compose project: its files, name and environment file."""

    command: list[str]
    docker: str
    name: str
    files: list[Path]
    env_file: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout_s: float = 120) -> str:
        """Run a compose command of this project; return its stdout, fail on an error."""
        argv = [*self.command, "--project-name", self.name, "--env-file", str(self.env_file)]
        for path in self.files:
            argv += ["--file", str(path)]
        done = subprocess.run(
            [*argv, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return done.stdout

    def docker_json(self, *args: str) -> Any:
        """Run a docker command that prints JSON; return it parsed."""
        done = subprocess.run(
            [self.docker, *args], capture_output=True, text=True, timeout=60, check=True
        )
        return json.loads(done.stdout)

    def container(self, service: str) -> dict[str, Any]:
        """Return `docker inspect` of the service's one container."""
        (container_id,) = self.run("ps", "-q", service).split()
        (info,) = self.docker_json("inspect", container_id)
        assert isinstance(info, dict)
        return info

    def kill(self, service: str) -> None:
        """SIGKILL the main process of the service's container, as a crash or the kernel's
        OOM killer would. (`docker kill` would not do: Docker counts it as a manual stop,
        after which no restart policy restarts the container.)"""
        pid = self.container(service)["State"]["Pid"]
        assert pid > 0, f"{service} is not running"
        os.kill(pid, signal.SIGKILL)

    def logs(self, service: str, lines: int = 40) -> str:
        """Return the last lines that the service's container printed."""
        try:
            return self.run("logs", "--no-color", "--tail", str(lines), service, timeout_s=60)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            return f"(no logs: {exc})"

    def down(self) -> None:
        """Remove the project's containers, networks and volumes."""
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout_s=300)

    def leftovers(self) -> list[str]:
        """Return the containers, networks and volumes still labelled with this project."""
        label = f"label=com.docker.compose.project={self.name}"
        found = []
        for kind in ("container", "network", "volume"):
            listing = [kind, "ls", "--quiet", "--filter", label]
            if kind == "container":
                listing.insert(2, "--all")
            done = subprocess.run(
                [self.docker, *listing], capture_output=True, text=True, timeout=60, check=True
            )
            found += [f"{kind} {name}" for name in done.stdout.split()]
        return found
