"""deploy/compose.yaml against the Compose Specification schema, and its federation layout.

The schema is the compose-spec project's own JSON schema, vendored unmodified in
tests/deploy/compose-spec.json (provenance and licence: compose-spec.NOTICE).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aggregator_service.api.auth import parse_tokens
from shared.config import load_config
from tests.deploy.helpers import DEPLOY, REPO, VM, parse_env_file, unknown_variables

COMPOSE = DEPLOY / "compose.yaml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
WORKERS = [f"worker-{k}" for k in range(10)]
SECRETS_STEP = "aggregator-secrets"
IMAGE_UID = "10001"  # USER of deploy/docker/Dockerfile
# ${NAME}, ${NAME:?message}, ${NAME:-default}: Compose's interpolation.
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")
_REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")
# The files of `tributary-secrets tokens` and `tls`, by the name of their Compose secret.
SECRET_FILES = {
    "tokens": "tokens.txt",
    "admin-token": "admin.token",
    "server-cert": "server.pem",
    "server-key": "server.key",
    "ca": "ca.pem",
}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _schema_errors(data: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the compose file")
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    return [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(data)]


def _services() -> dict[str, Any]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def test_valid_against_the_compose_specification() -> None:
    """The file, anchors and merge keys resolved, satisfies the compose-spec schema."""
    assert _schema_errors(_compose()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["services", "worker-3", "depends_on", "aggregator", "condition"], "healthy"),
        (["services", "aggregator", "restart_policy"], "always"),
        (["volumes", "aggregator-state"], "named"),
    ],
)
def test_schema_rejects_a_broken_copy(path: list[str], value: str) -> None:
    """The validation is not vacuous: a bad condition, key or volume is reported."""
    data = copy.deepcopy(_compose())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _schema_errors(data) != []


def test_ten_workers_cover_partitions_zero_to_nine() -> None:
    """worker-0 ... worker-9: distinct client and partition ids 0-9, all of 10 partitions."""
    services = _services()
    assert sorted(services) == sorted(["aggregator", SECRETS_STEP, *WORKERS])
    num_partitions = load_config(DEPLOY / "experiment.yaml").num_partitions
    for k, name in enumerate(WORKERS):
        env = services[name]["environment"]
        assert env["TRIBUTARY_ROLE"] == "worker"
        assert env["TRIBUTARY_WORKER_CLIENT_ID"] == str(k)
        assert env["TRIBUTARY_WORKER_PARTITION_ID"] == str(k)
        assert int(env["TRIBUTARY_WORKER_NUM_PARTITIONS"]) == num_partitions == 10
        token = _INTERPOLATION.fullmatch(env["TRIBUTARY_WORKER_TOKEN"])
        assert token is not None
        assert token.group(1) == f"TRIBUTARY_CLIENT_TOKEN_{k}"


def test_workers_wait_for_a_healthy_aggregator_they_can_reach() -> None:
    """Workers start once the aggregator is healthy and reach it by its service name."""
    services = _services()
    aggregator = services["aggregator"]
    assert aggregator["healthcheck"]["test"] == ["CMD", "tributary-healthcheck"]
    port = aggregator["environment"]["TRIBUTARY_AGG_PORT"]
    for name in WORKERS:
        worker = services[name]
        assert worker["depends_on"] == {"aggregator": {"condition": "service_healthy"}}
        assert worker["environment"]["TRIBUTARY_WORKER_SERVER_URL"] == f"https://aggregator:{port}"
        assert worker["restart"] == "on-failure"  # exit 0 (finished) stays stopped


def test_restart_policies_bring_killed_containers_back() -> None:
    """A crashed or killed aggregator restarts on its volume until stopped; a worker restarts
    after any failure (SIGKILL included) but not after it finished (exit 0)."""
    services = _services()
    assert services["aggregator"]["restart"] == "unless-stopped"
    assert all(services[name]["restart"] == "on-failure" for name in WORKERS)
    assert services[SECRETS_STEP]["restart"] == "no"  # a one-shot copy


def test_state_volume_and_experiment_mount() -> None:
    """A named volume holds the state dir; the experiment file is mounted where it is read."""
    data = _compose()
    aggregator = data["services"]["aggregator"]
    env = aggregator["environment"]
    assert "aggregator-state" in data["volumes"]
    assert f"aggregator-state:{env['TRIBUTARY_AGG_STATE_DIR']}" in aggregator["volumes"]
    mount = f"./experiment.yaml:{env['TRIBUTARY_AGG_CONFIG']}:ro"
    assert (COMPOSE.parent / "experiment.yaml").is_file()
    for name in ["aggregator", *WORKERS]:
        assert mount in data["services"][name]["volumes"]


def test_one_image_built_from_the_deploy_dockerfile() -> None:
    """Every service runs the same image, built from the repository root."""
    for service in _services().values():
        assert service["image"] == "tributary:local"
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()


def test_environment_names_only_real_settings() -> None:
    """Every TRIBUTARY_* variable set in the compose file is read by something."""
    names = {key for service in _services().values() for key in service.get("environment", {})}
    assert unknown_variables(names) == []


def _make_secrets(directory: Path) -> dict[str, str]:
    """Run the documented commands into `directory`; return the .env they make."""
    script = ["bash", str(VM / "tributary-secrets")]
    subprocess.run([*script, "tokens", str(directory), "10"], capture_output=True, check=True)
    env_text = subprocess.run(
        [*script, "env", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    (directory / ".env").write_text(env_text)
    return parse_env_file(directory / ".env")


def test_generated_env_file_gives_each_worker_its_own_token(tmp_path: Path) -> None:
    """The .env of `tributary-secrets env` defines every variable the file requires, and
    worker k then sends client k's token of tokens.txt."""
    env = _make_secrets(tmp_path)
    assert set(_REQUIRED.findall(COMPOSE.read_text())) == set(env)
    optional = set(_INTERPOLATION.findall(COMPOSE.read_text())) - set(env)
    assert optional == {"TRIBUTARY_PUBLISH_PORT"}  # has a default: 8000
    tokens = parse_tokens((tmp_path / "tokens.txt").read_text(), source="tokens.txt")
    services = _services()
    for k, name in enumerate(WORKERS):
        value = services[name]["environment"]["TRIBUTARY_WORKER_TOKEN"]
        assert _INTERPOLATION.sub(lambda m: env[m.group(1)], value) == tokens[str(k)]


def test_aggregator_reads_its_secrets_from_the_one_shot_copy() -> None:
    """Compose's secret files, copied as root into a volume for uid 10001, mode 400, are where
    the aggregator's settings look; the aggregator starts only after the copy succeeded."""
    data = _compose()
    step = data["services"][SECRETS_STEP]
    assert step["user"] == "0:0"
    assert step["network_mode"] == "none"
    assert step["restart"] == "no"
    entrypoint = step["entrypoint"]
    assert entrypoint[0] == "install"
    options = dict(zip(entrypoint[1::2], entrypoint[2::2], strict=False))
    assert options["-o"] == options["-g"] == IMAGE_UID
    assert options["-m"] == "0400"
    (volume,) = step["volumes"]
    volume_name, copy_dir = volume.split(":")
    assert options["-t"] == copy_dir
    targets = {secret["source"]: secret["target"] for secret in step["secrets"]}
    assert step["command"] == [f"/run/secrets/{target}" for target in targets.values()]
    # Top-level secrets are the files that `tributary-secrets tokens` and `tls` make.
    files = {name: spec["file"] for name, spec in data["secrets"].items()}
    assert files == {name: f"./secrets/{file}" for name, file in SECRET_FILES.items()}
    assert targets == {name: file for name, file in SECRET_FILES.items() if name != "ca"}

    aggregator = data["services"]["aggregator"]
    assert aggregator["depends_on"] == {
        SECRETS_STEP: {"condition": "service_completed_successfully"}
    }
    (mount,) = [v for v in aggregator["volumes"] if v.startswith(f"{volume_name}:")]
    _, mounted_at, read_only = mount.split(":")
    assert read_only == "ro"
    env = aggregator["environment"]
    assert env["TRIBUTARY_AGG_TOKENS_FILE"] == f"{mounted_at}/{targets['tokens']}"
    assert env["TRIBUTARY_AGG_ADMIN_TOKEN_FILE"] == f"{mounted_at}/{targets['admin-token']}"
    assert env["TRIBUTARY_AGG_SSL_CERTFILE"] == f"{mounted_at}/{targets['server-cert']}"
    assert env["TRIBUTARY_AGG_SSL_KEYFILE"] == f"{mounted_at}/{targets['server-key']}"
    assert "secrets" not in aggregator  # only the one-shot step sees the host's files
    assert volume_name in data["volumes"]
    dockerfile = (DEPLOY / "docker/Dockerfile").read_text()
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in dockerfile


def test_no_worker_sees_the_aggregators_secrets() -> None:
    """Workers get their own token and the CA certificate (public) that verifies the
    aggregator: no other secret, no secrets volume."""
    services = _services()
    for name in WORKERS:
        worker = services[name]
        assert worker["secrets"] == [{"source": "ca", "target": "ca.pem"}]
        assert worker["environment"]["TRIBUTARY_WORKER_CA_BUNDLE"] == "/run/secrets/ca.pem"
        assert not [v for v in worker["volumes"] if "secrets" in v]


def test_generated_secrets_stay_out_of_git() -> None:
    """deploy/.env and deploy/secrets/ are ignored by git."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a checkout")
    for path in ("deploy/.env", "deploy/secrets/tokens.txt", "deploy/secrets/admin.token"):
        done = subprocess.run(
            ["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True, check=False
        )
        assert done.returncode == 0, f"{path} is not ignored"
