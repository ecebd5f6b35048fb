"""docs/deploy.md: its curl recipes name real endpoints, its commands match the files."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

from aggregator_service.api.routes import admin, events, inspect, model, updates
from tests.deploy.helpers import K8S, REPO, VM, load_yaml_documents

DOC = REPO / "docs/deploy.md"


def _paths(method: str) -> set[str]:
    routes = [
        r
        for m in (inspect, model, updates, admin, events)
        for r in m.router.routes
        if isinstance(r, APIRoute)
    ]
    return {route.path for route in routes if method in (route.methods or set())}


def test_curl_recipes_use_existing_endpoints() -> None:
    """Every $AGG/<path> in the runbook is a GET or admin endpoint; every GET one is shown.

    The dashboard's page, /ui, is named too: its files are not API endpoints.
    """
    used = set(re.findall(r"\$AGG(/[a-z_/]+)", DOC.read_text()))
    admin_paths = {path for path in _paths("POST") if path.startswith("/admin/")}
    assert admin_paths
    assert used == _paths("GET") | admin_paths | {"/ui"}


def test_curl_recipes_send_the_admin_token_except_to_healthz() -> None:
    """Each recipe line that calls $AGG carries the token header, but the /healthz one."""
    for line in DOC.read_text().splitlines():
        if not line.startswith("curl ") or "$AGG/" not in line:
            continue
        if "$AGG/healthz" in line:
            assert "Authorization" not in line, line
            assert "$AUTH" not in line, line
        else:
            assert '"$AUTH"' in line or "Authorization: Bearer" in line, line


def test_documented_secrets_commands_exist() -> None:
    """Every `tributary-secrets <command>` of the runbook is a command of the helper."""
    script = (VM / "tributary-secrets").read_text()
    commands = set(re.findall(r"tributary-secrets ([a-z-]+) ", DOC.read_text()))
    assert {"tokens", "line", "add", "env", "tls", "user-data"} <= commands
    for command in commands:
        assert f"        {command}:" in script, command


def test_documented_kubectl_secret_matches_the_manifests() -> None:
    """`kubectl create secret` makes the Secret the pods mount, with the keys they read."""
    (secret,) = load_yaml_documents(K8S / "secret.yaml")
    match = re.search(
        r"kubectl -n (\S+) create secret generic (\S+) \\\n\s+(.*)\n", DOC.read_text()
    )
    assert match is not None
    namespace, name, options = match.groups()
    assert (namespace, name) == (secret["metadata"]["namespace"], secret["metadata"]["name"])
    keys = set(re.findall(r"--from-file=([^=]+)=", options))
    assert keys == set(secret["stringData"])


def test_documented_role_switch_edits_one_line_of_cloud_init() -> None:
    """The sed line of the runbook turns cloud-init.yaml into the aggregator's user data."""
    match = re.search(r"sed 's/\^(.*?)/(.*?)/'", DOC.read_text())
    assert match is not None
    before, after = match.groups()
    lines = (VM / "cloud-init.yaml").read_text().splitlines()
    assert sum(1 for line in lines if re.fullmatch(before, line)) == 1
    assert after.strip() == "TRIBUTARY_ROLE=aggregator"


def test_every_deploy_file_is_mentioned() -> None:
    """The runbook names each file a user deploys with."""
    text = DOC.read_text()
    for name in (
        "cloud-init.yaml",
        "install.sh",
        "tributary-role",
        "compose.yaml",
        "Dockerfile",
        "build-offline.sh",
        "kustomization.yaml",
        "experiment.yaml",
        "role.env",
        "tributary-secrets",
        "secret.yaml",
    ):
        assert name in text, name
