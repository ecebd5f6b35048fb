"""deploy/compose.yaml against the Compose Specification schema, and its federation layout.

The schema is the compose-spec project's own JSON schema, vendored unmodified in
tests/deploy/compose-spec.json (provenance and licence: compose-spec.NOTICE).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import load_config
from tests.deploy.helpers import DEPLOY, REPO, unknown_variables

COMPOSE = DEPLOY / "compose.yaml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
WORKERS = [f"worker-{k}" for k in range(10)]


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
    assert sorted(services) == sorted(["aggregator", *WORKERS])
    num_partitions = load_config(DEPLOY / "experiment.yaml").num_partitions
    for k, name in enumerate(WORKERS):
        env = services[name]["environment"]
        assert env["TRIBUTARY_ROLE"] == "worker"
        assert env["TRIBUTARY_WORKER_CLIENT_ID"] == str(k)
        assert env["TRIBUTARY_WORKER_PARTITION_ID"] == str(k)
        assert int(env["TRIBUTARY_WORKER_NUM_PARTITIONS"]) == num_partitions == 10


def test_workers_wait_for_a_healthy_aggregator_they_can_reach() -> None:
    """Workers start once the aggregator is healthy and reach it by its service name."""
    services = _services()
    aggregator = services["aggregator"]
    assert aggregator["healthcheck"]["test"] == ["CMD", "tributary-healthcheck"]
    port = aggregator["environment"]["TRIBUTARY_AGG_PORT"]
    for name in WORKERS:
        worker = services[name]
        assert worker["depends_on"] == {"aggregator": {"condition": "service_healthy"}}
        assert worker["environment"]["TRIBUTARY_WORKER_SERVER_URL"] == f"http://aggregator:{port}"
        assert worker["restart"] == "on-failure"  # exit 0 (finished) stays stopped


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
    names = {key for service in _services().values() for key in service["environment"]}
    assert unknown_variables(names) == []
