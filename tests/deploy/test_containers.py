"""deploy/compose.yaml run for real: one aggregator and ten workers in containers, with
tokens and TLS, from the image that deploy/docker/build-offline.sh builds offline.

The test starts the Docker engine when none runs (root only), builds the image (its base,
wheelhouse and layers are kept between runs), brings the federation up under a project
name of its own, and inspects it from the host with curl through the published port,
over HTTPS with the admin token. It then kills a worker container and, later, the
aggregator container with SIGKILL, and checks what their restart policies promise. The
project's containers, networks and volumes are removed (`down -v`) whatever happens.
Run it with `make test-containers` (marker `containers`; the default run leaves it out).
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.containers import (
    ComposeProject,
    Engine,
    build_image,
    compose_command,
    docker_binary,
)
from tests.deploy.helpers import DEPLOY, VM

pytestmark = pytest.mark.containers

IMAGE = "tributary:local"  # the image deploy/compose.yaml runs
NUM_CLIENTS = 10
NUM_ROUNDS = 7  # 1-2 checked; a worker killed in 3 or 4, the aggregator in a later one
MIN_FIT_CLIENTS = 8
WORKERS = [f"worker-{k}" for k in range(NUM_CLIENTS)]
EVERYONE = sorted(str(k) for k in range(NUM_CLIENTS))
VICTIM = "9"  # one of the clients on a slow link: still busy when the others have posted
BUILD_TIMEOUT_S = 3600.0  # a cold build copies several GB of wheels
ROUND_WAIT_S = 240.0


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The docker CLI of a running engine: started here (and stopped after) if need be."""
    binary = docker_binary()
    if binary is None:
        pytest.skip("the docker CLI is not installed (apt-get install docker.io)")
    engine = Engine(binary, tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    reason = engine.start()
    if reason is not None:
        pytest.skip(reason)
    try:
        yield binary
    finally:
        engine.stop()


def _secrets(directory: Path) -> None:
    """Make the operator's tokens and TLS files with the documented commands."""
    script = ["bash", str(VM / "tributary-secrets")]
    for args in (["tokens", str(directory), str(NUM_CLIENTS)], ["tls", str(directory)]):
        if args[0] == "tls":
            args += ["DNS:aggregator", "DNS:localhost", "IP:127.0.0.1"]
        subprocess.run([*script, *args], capture_output=True, timeout=60, check=True)


def _env_file(directory: Path, port: int) -> Path:
    """deploy/.env as `tributary-secrets env` prints it, plus the published port."""
    tokens = subprocess.run(
        ["bash", str(VM / "tributary-secrets"), "env", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    path = directory / "compose.env"
    path.write_text(f"{tokens}TRIBUTARY_PUBLISH_PORT={port}\n")
    return path


def _fast_experiment(path: Path) -> Path:
    """deploy/experiment.yaml made quick: seven short rounds; clients 7-9 on 2 Mbit/s links,
    so that a round stays open a few seconds after the fast clients have posted."""
    config = yaml.safe_load((DEPLOY / "experiment.yaml").read_text())
    config |= {"num_rounds": NUM_ROUNDS, "batch_size": 64, "round_timeout_s": 60}
    config |= {"min_available_clients": NUM_CLIENTS, "min_fit_clients": MIN_FIT_CLIENTS}
    config["network"] = [{"clients": "7-9", "bandwidth_mbit": 2.0}]
    assert (config["dataset"], config["model"]) == ("mnist5k", "mlp")  # offline, small
    path.write_text(yaml.safe_dump(config))
    return path


def _override(path: Path, secrets: Path, experiment: Path) -> Path:
    """A second compose file: the test's experiment and secrets instead of deploy/'s."""
    mount = [f"{experiment}:/etc/tributary/experiment.yaml:ro"]
    files = {
        "tokens": "tokens.txt",
        "admin-token": "admin.token",
        "server-cert": "server.pem",
        "server-key": "server.key",
        "ca": "ca.pem",
    }
    override = {
        "services": {name: {"volumes": mount} for name in ["aggregator", *WORKERS]},
        "secrets": {name: {"file": str(secrets / file)} for name, file in files.items()},
    }
    path.write_text(yaml.safe_dump(override))
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Operator:
    """curl on the host, through the published port, verifying the federation's CA."""

    port: int
    ca: Path
    admin_token: str

    def curl(self, path: str, *extra: str, token: bool = True) -> str:
        """Run curl on https://127.0.0.1:PORT + path and return its stdout."""
        argv = ["curl", "-sS", "--max-time", "10", "--cacert", str(self.ca), *extra]
        if token:
            argv += ["-H", f"Authorization: Bearer {self.admin_token}"]
        argv.append(f"https://127.0.0.1:{self.port}{path}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True)
        return done.stdout

    def get(self, path: str) -> Any:
        """GET path with the admin token; fail on an error status."""
        return json.loads(self.curl(path, "-f"))

    def poll(self, path: str) -> Any:
        """GET path as `get` does, or None while the aggregator does not answer."""
        try:
            return self.get(path)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, json.JSONDecodeError):
            return None

    def wait(self, what: str, ready: Callable[[Any], bool], timeout_s: float) -> Any:
        """Poll /status until `ready` holds for it; fail with the last status otherwise."""
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline:
            status = self.poll("/status")
            if status is not None and ready(status):
                return status
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}; last /status: {status}")

    def rows(self) -> dict[int, dict[str, Any]]:
        """Return /history by round."""
        return {row["round"]: row for row in self.get("/history")}

    def model_digest(self, directory: Path) -> tuple[dict[str, Any], str]:
        """Return /model and the sha256 of /get_weights downloaded at the same model."""
        for _ in range(10):
            summary = self.get("/model")
            path = directory / "model.msgpack"
            self.curl("/get_weights", "-f", "-o", str(path))
            if self.get("/model")["sha256"] == summary["sha256"]:  # no publish in between
                return summary, hashlib.sha256(path.read_bytes()).hexdigest()
        pytest.fail("the model changed during every one of 10 downloads")


@pytest.fixture
def federation(docker: str, tmp_path: Path) -> Iterator[tuple[ComposeProject, Operator]]:
    """The compose federation, up; `down -v` afterwards, passed or failed."""
    seconds = build_image(docker, IMAGE, timeout_s=BUILD_TIMEOUT_S)
    print(f"image {IMAGE} built (or found up to date) in {seconds:.0f} s")
    command = compose_command(docker)
    if command is None:
        pytest.skip("Docker Compose is not installed (apt-get install docker-compose)")
    secrets = tmp_path / "secrets"
    _secrets(secrets)
    port = _free_port()
    project = ComposeProject(
        command=command,
        docker=docker,
        name=f"tributary-test-{uuid.uuid4().hex[:10]}",
        files=[
            DEPLOY / "compose.yaml",
            _override(tmp_path / "override.yaml", secrets, _fast_experiment(tmp_path / "e.yaml")),
        ],
        env_file=_env_file(secrets, port),
    )
    operator = Operator(port, secrets / "ca.pem", (secrets / "admin.token").read_text().strip())
    try:
        project.run("up", "--detach", "--no-build", timeout_s=600)
        yield project, operator
    finally:
        if project.leftovers():  # the test failed before its own `down`
            print(project.logs("aggregator"))
        project.down()


def _restart_count(project: ComposeProject, service: str) -> int:
    count: int = project.container(service)["RestartCount"]
    return count


def _wait_restarted(project: ComposeProject, service: str, before: int) -> None:
    """Wait until the restart policy has started the service's container again."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = project.container(service)
        if info["RestartCount"] > before and info["State"]["Running"]:
            return
        time.sleep(0.5)
    pytest.fail(f"{service} was not restarted:\n{project.logs(service)}")


def _wait_row(operator: Operator, server_round: int) -> dict[str, Any]:
    """Wait until round `server_round` is in /history; return its row."""
    operator.wait(
        f"round {server_round} to close",
        lambda s: s["round"] > server_round or s["phase"] == "finished",
        ROUND_WAIT_S,
    )
    return operator.rows()[server_round]


def _check_first_rounds(operator: Operator, directory: Path) -> None:
    """Two rounds with all ten clients; tokens required; the model's hash matches."""
    operator.wait("two rounds", lambda s: s["round"] > 2 or s["phase"] == "finished", 600)
    assert operator.curl("/status", "-o", "/dev/null", "-w", "%{http_code}", token=False) == "401"
    status = operator.get("/status")
    assert status["registered_clients"] == NUM_CLIENTS
    assert status["num_rounds"] == NUM_ROUNDS
    rows = operator.rows()
    for server_round in (1, 2):
        assert rows[server_round]["participants"] == EVERYONE
        assert rows[server_round]["num_examples"] == 4000  # mnist5k's training split
    summary, digest = operator.model_digest(directory)
    assert summary["model"] == "mlp"
    assert summary["round"] >= 2
    assert digest == summary["sha256"]


def _kill_worker_mid_round(project: ComposeProject, operator: Operator) -> None:
    """SIGKILL a worker that has not posted yet: the round closes by its rules, the
    container is restarted and the worker takes part in the next round."""
    status = operator.wait(
        f"a round in training without client {VICTIM}'s update",
        lambda s: (
            s["phase"] == "training"
            and VICTIM in s["selected"]
            and VICTIM not in s["received_from"]
            and s["round"] < NUM_ROUNDS - 2
        ),
        ROUND_WAIT_S,
    )
    server_round = status["round"]
    before = _restart_count(project, f"worker-{VICTIM}")
    project.kill(f"worker-{VICTIM}")
    _wait_restarted(project, f"worker-{VICTIM}", before)

    row = _wait_row(operator, server_round)
    assert len(row["participants"]) >= MIN_FIT_CLIENTS
    assert set(row["participants"]) <= set(EVERYONE)
    assert _wait_row(operator, server_round + 1)["participants"] == EVERYONE


def _kill_aggregator_mid_round(project: ComposeProject, operator: Operator) -> None:
    """SIGKILL the aggregator with some updates acknowledged: it restarts on its volume,
    resumes that round from its checkpoint and journal, and every acknowledged update is
    counted; the workers carry on to the end by themselves."""
    status = operator.wait(
        "a round in training with some updates in",
        lambda s: (
            s["phase"] == "training"
            and 0 < len(s["received_from"]) < len(s["selected"])
            and s["round"] < NUM_ROUNDS
        ),
        ROUND_WAIT_S,
    )
    server_round, acknowledged = status["round"], set(status["received_from"])
    before = _restart_count(project, "aggregator")
    project.kill("aggregator")
    _wait_restarted(project, "aggregator", before)

    resumed = operator.wait("the restarted aggregator", lambda s: True, 120)
    assert resumed["round"] >= server_round  # from its checkpoint, not round 1
    assert resumed["uptime_s"] < 120
    if resumed["round"] == server_round and resumed["phase"] == "training":
        assert acknowledged <= set(resumed["received_from"])
    final = operator.wait("the last round", lambda s: s["phase"] == "finished", 2 * ROUND_WAIT_S)
    assert final["round"] == NUM_ROUNDS
    rows = operator.rows()
    assert sorted(rows) == list(range(1, NUM_ROUNDS + 1))
    assert acknowledged <= set(rows[server_round]["participants"])
    assert rows[NUM_ROUNDS]["participants"] == EVERYONE


def _wait_workers_finished(project: ComposeProject) -> None:
    """Every worker exits 0 (the federation finished) and stays stopped."""
    deadline = time.monotonic() + 120
    pending = list(WORKERS)
    while pending and time.monotonic() < deadline:
        states = {name: project.container(name)["State"] for name in pending}
        for name, state in states.items():
            if not state["Running"] and not state["Restarting"]:
                assert state["ExitCode"] == 0, f"{name}:\n{project.logs(name)}"
                pending.remove(name)
        time.sleep(1)
    assert not pending, f"still running: {pending}"


def test_compose_federation_survives_container_kills(
    federation: tuple[ComposeProject, Operator], tmp_path: Path
) -> None:
    """1 + 10 containers federate over HTTPS with tokens, and recover from SIGKILLs."""
    project, operator = federation
    started = time.monotonic()
    _check_first_rounds(operator, tmp_path)
    _kill_worker_mid_round(project, operator)
    _kill_aggregator_mid_round(project, operator)
    _wait_workers_finished(project)
    summary, digest = operator.model_digest(tmp_path)
    assert (summary["round"], digest) == (NUM_ROUNDS, summary["sha256"])
    print(f"federation: {time.monotonic() - started:.0f} s after `up` to the last round")

    project.down()
    assert project.leftovers() == []
