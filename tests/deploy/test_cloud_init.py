"""deploy/vm/cloud-init.yaml: a #cloud-config that installs the project and selects the role."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import VM, parse_env_file

CLOUD_INIT = VM / "cloud-init.yaml"
# Where Debian's cloud-init package keeps its schema of the #cloud-config format.
SYSTEM_SCHEMA = Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas")


def _user_data() -> dict[str, Any]:
    data = yaml.safe_load(CLOUD_INIT.read_text())
    assert isinstance(data, dict)
    return data


def _files() -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in _user_data()["write_files"]}


def test_starts_with_the_cloud_config_header() -> None:
    """cloud-init only treats user-data as cloud-config when its first line says so."""
    assert CLOUD_INIT.read_text().splitlines()[0] == "#cloud-config"


def test_installs_python_venv_and_runs_the_bootstrap() -> None:
    """The packages a venv needs are installed and the bootstrap runs last."""
    data = _user_data()
    assert {"python3", "python3-venv", "curl", "git"} <= set(data["packages"])
    assert data["runcmd"] == [["/usr/local/sbin/tributary-bootstrap"]]
    assert _files()["/usr/local/sbin/tributary-bootstrap"]["permissions"] == "0755"


def test_role_env_is_the_one_block_to_edit(tmp_path: Path) -> None:
    """role.env carries exactly the three keys tributary-role reads."""
    role_env = tmp_path / "role.env"
    role_env.write_text(_files()["/etc/tributary/role.env"]["content"])
    env = parse_env_file(role_env)
    assert set(env) == {"TRIBUTARY_ROLE", "TRIBUTARY_AGGREGATOR_URL", "TRIBUTARY_CLIENT_ID"}
    assert env["TRIBUTARY_ROLE"] in {"aggregator", "worker"}
    assert env["TRIBUTARY_CLIENT_ID"] == ""  # clones take their id from the hostname


def test_token_and_ca_are_per_machine_files_with_placeholders() -> None:
    """worker.token (private) and ca.pem are written where worker.env reads them."""
    files = _files()
    worker_env = parse_env_file(VM / "worker.env")
    token = files[worker_env["TRIBUTARY_WORKER_TOKEN_FILE"]]
    assert token["permissions"] == "0600"
    assert token["content"] == "CLIENT_TOKEN_LINE\n"
    ca = files[worker_env["TRIBUTARY_WORKER_CA_BUNDLE"]]
    assert ca["content"] == "CA_CERTIFICATE\n"
    order = [entry["path"] for entry in _user_data()["write_files"]]
    assert order[:3] == ["/etc/tributary/role.env", token["path"], ca["path"]]  # the blocks to edit


def test_clients_reach_the_aggregator_over_https(tmp_path: Path) -> None:
    """With TLS on by default, the URL in role.env is https://."""
    role_env = tmp_path / "role.env"
    role_env.write_text(_files()["/etc/tributary/role.env"]["content"])
    assert parse_env_file(role_env)["TRIBUTARY_AGGREGATOR_URL"].startswith("https://")


def test_install_env_parameterises_source_and_cpu_torch(tmp_path: Path) -> None:
    """The source and the torch index are settings, the CPU wheels by default."""
    install_env = tmp_path / "install.env"
    install_env.write_text(_files()["/etc/tributary/install.env"]["content"])
    env = parse_env_file(install_env)
    assert set(env) == {"TRIBUTARY_SOURCE", "TRIBUTARY_TORCH_INDEX_URL"}
    assert env["TRIBUTARY_TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_bootstrap_runs_the_installer_of_the_fetched_tree() -> None:
    """The bootstrap calls deploy/vm/install.sh of the tree it fetched, then tributary-role."""
    script = _files()["/usr/local/sbin/tributary-bootstrap"]["content"]
    assert script.startswith("#!/usr/bin/env bash\n")
    assert '"$src/deploy/vm/install.sh" --source "$src"' in script
    assert script.rstrip().endswith("/usr/local/sbin/tributary-role apply")


def test_valid_for_cloud_init_schema() -> None:
    """`cloud-init schema` accepts the file (or its JSON schema does, without the CLI)."""
    if shutil.which("cloud-init") is not None:
        done = subprocess.run(
            ["cloud-init", "schema", "--config-file", str(CLOUD_INIT)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return
    schema_file = SYSTEM_SCHEMA / "schema-cloud-config-v1.json"
    if not schema_file.exists():
        pytest.skip("cloud-init is not installed (Debian package cloud-init ships its schema)")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_file.read_text())
    jsonschema.Draft4Validator(schema).validate(_user_data())
