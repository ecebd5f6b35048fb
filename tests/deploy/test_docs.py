"""docs/deploy.md: its curl recipes name real endpoints, its commands match the files."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

from aggregator_service.routes import inspect, model, updates
from tests.deploy.helpers import REPO, VM

DOC = REPO / "docs/deploy.md"


def _get_paths() -> set[str]:
    routes = [
        r for m in (inspect, model, updates) for r in m.router.routes if isinstance(r, APIRoute)
    ]
    return {route.path for route in routes if "GET" in (route.methods or set())}


def test_curl_recipes_use_existing_get_endpoints() -> None:
    """Every $AGG/<path> in the runbook is a GET endpoint, and every GET endpoint is shown."""
    used = set(re.findall(r"\$AGG(/[a-z_]+)", DOC.read_text()))
    assert used == _get_paths()


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
        "kustomization.yaml",
        "experiment.yaml",
        "role.env",
    ):
        assert name in text, name
