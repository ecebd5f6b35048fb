"""deploy/vm: the systemd units and env files, checked by systemd-analyze and the settings."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from aggregator_service.settings import AggregatorSettings
from client_worker.settings import WorkerSettings
from shared.config import load_config
from tests.deploy.helpers import (
    REPO,
    VM,
    exec_start_argv,
    parse_env_file,
    parse_unit,
    unit_values,
    unknown_variables,
)
from tests.deploy.vmroot import install_machine, service_command

UNITS = ["tributary-aggregator.service", "tributary-worker@.service", "tributary-role.service"]
SERVICE_UNITS = ["tributary-aggregator.service", "tributary-worker@.service"]
ENV_FILES = {
    "tributary-aggregator.service": "aggregator.env",
    "tributary-worker@.service": "worker.env",
}
# Lines systemd-analyze prints when it cannot work at all here (a container without a manager).
_CANNOT_RUN = (
    "Failed to initialize manager",
    "Failed to allocate manager",
    "Operation not permitted",
)


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return path


def _stage_units(tmp_path: Path, units: dict[str, str]) -> Path:
    """Copy units to tmp_path with their programs replaced by stub executables there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("tributary-aggregator", "tributary-worker", "tributary-role"):
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    for name, text in units.items():
        text = text.replace("/opt/tributary/venv/bin/", f"{bin_dir}/")
        text = text.replace("/usr/local/sbin/", f"{bin_dir}/")
        (tmp_path / name).write_text(text)
    return tmp_path


def _verify(tmp_path: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [_analyze(), "verify", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if any(marker in done.stderr for marker in _CANNOT_RUN):
        pytest.skip(f"systemd-analyze cannot run in this environment: {done.stderr.strip()}")
    return done


def _instance_name(unit: str) -> str:
    return unit.replace("@.service", "@3.service")


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds no unknown directive, bad value or missing program."""
    staged = _stage_units(tmp_path, {name: (VM / name).read_text() for name in UNITS})
    done = _verify(staged, [_instance_name(name) for name in UNITS])
    assert (done.returncode, done.stderr) == (0, "")


def test_verify_reports_a_misspelled_directive(tmp_path: Path) -> None:
    """The check above is not vacuous: a typo in a unit produces a complaint."""
    text = (VM / "tributary-aggregator.service").read_text()
    broken = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    staged = _stage_units(tmp_path, {"tributary-aggregator.service": broken})
    done = _verify(staged, ["tributary-aggregator.service"])
    assert "NoNewPrivilege" in done.stderr


@pytest.mark.parametrize("name", SERVICE_UNITS)
def test_services_are_hardened(tmp_path: Path, name: str) -> None:
    """systemd's own exposure score of each service stays at 2.5 or below (10 = unprotected)."""
    staged = _stage_units(tmp_path, {name: (VM / name).read_text()})
    command = [_analyze(), "security", "--offline=yes", "--threshold=25"]
    done = subprocess.run(
        [*command, _instance_name(name)],
        cwd=staged,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in done.stderr and "nrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no offline security check (systemd < 250)")
    assert done.returncode == 0, done.stdout[-600:] + done.stderr
    plain = tmp_path / "plain.service"
    plain.write_text("[Service]\nExecStart=/bin/true\n")
    unhardened = subprocess.run(
        [*command, "plain.service"], cwd=staged, capture_output=True, timeout=60, check=False
    )
    assert unhardened.returncode != 0  # the threshold does reject an unhardened unit


@pytest.mark.parametrize("name", SERVICE_UNITS)
def test_services_run_unprivileged_and_restart_on_failure(name: str) -> None:
    """Each service has a dedicated user, a state directory and the basic protections."""
    unit = parse_unit(VM / name)
    service = dict(unit["Service"])
    assert service["User"] == service["Group"] == "tributary"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # configuration errors: no restart loop
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    state_dir = f"/var/lib/{service['StateDirectory']}"
    assert service["WorkingDirectory"] == state_dir
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"
    assert "tributary-role.service" in dict(unit["Unit"])["After"].split()


@pytest.mark.parametrize("name", SERVICE_UNITS)
def test_exec_start_is_a_console_script_of_the_project(name: str) -> None:
    """ExecStart runs the venv's entry point that pyproject.toml declares."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    argv = exec_start_argv(parse_unit(VM / name), instance="4", env={})
    program = Path(argv[0])
    assert program.parent == Path("/opt/tributary/venv/bin")
    assert program.name in scripts
    if "@" in name:
        assert argv[1:] == ["--client-id", "4", "--partition-id", "4"]


@pytest.mark.parametrize("name", SERVICE_UNITS)
def test_environment_files_name_only_real_settings(name: str) -> None:
    """Every TRIBUTARY_* variable of the env file and the unit is read by a settings class."""
    unit = parse_unit(VM / name)
    assert unit_values(unit, "Service", "EnvironmentFile") == [f"/etc/tributary/{ENV_FILES[name]}"]
    env = parse_env_file(VM / ENV_FILES[name])
    assert unknown_variables(set(env)) == []
    text = (VM / ENV_FILES[name]).read_text()
    assert "NOT implemented" not in text  # no placeholder left from before authentication


def test_aggregator_env_file_configures_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """aggregator.env, read as the process environment, turns tokens and HTTPS on."""
    for key, value in parse_env_file(VM / "aggregator.env").items():
        monkeypatch.setenv(key, value)
    settings = AggregatorSettings()
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert settings.state_dir == Path("/var/lib/tributary")
    assert settings.config == Path("/etc/tributary/experiment.yaml")
    assert settings.tokens_file == Path("/etc/tributary/tokens.txt")
    assert settings.admin_token_file == Path("/etc/tributary/admin.token")
    assert settings.admin_token is None  # from the file, not from the environment
    assert settings.tls
    assert (settings.ssl_certfile, settings.ssl_keyfile) == (
        Path("/etc/tributary/server.pem"),
        Path("/etc/tributary/server.key"),
    )
    # Tighter than the defaults (2 per second, bursts of 100), still many per round.
    assert 0 < settings.receive_rate < AggregatorSettings.model_fields["receive_rate"].default
    assert 1 < settings.receive_burst < AggregatorSettings.model_fields["receive_burst"].default


def test_worker_env_file_configures_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """worker.env plus the unit's flags: the right client, its token file, the CA, HTTPS."""
    for key, value in parse_env_file(VM / "worker.env").items():
        monkeypatch.setenv(key, value)
    settings = WorkerSettings(client_id="6", partition_id=6)
    assert settings.config_path == Path("/etc/tributary/experiment.yaml")
    assert settings.server_url.startswith("https://")
    assert settings.token_file == Path("/etc/tributary/worker.token")
    assert settings.token is None
    assert settings.ca_bundle == Path("/etc/tributary/ca.pem")
    assert settings.resolved_partition_id() == 6


def _run_unit_without(tmp_path: Path, *, role: str, present: dict[str, bytes]) -> tuple[int, str]:
    """Install a VM tree with only the `present` files, run its unit's command; (exit, stderr)."""
    url = "https://10.0.0.10:8000"
    root = tmp_path / "vm"
    unit = install_machine(
        root,
        role_env=f"TRIBUTARY_ROLE={role}\nTRIBUTARY_AGGREGATOR_URL={url}\nTRIBUTARY_CLIENT_ID=\n",
        hostname="client-04",
        experiment=(REPO / "deploy/experiment.yaml").read_text(),
        files=present,
    )
    service = service_command(root, unit)
    # Should the check ever pass by mistake, serve on loopback only, on a free port.
    env = service.env | {"TRIBUTARY_AGG_HOST": "127.0.0.1", "TRIBUTARY_AGG_PORT": "0"}
    done = subprocess.run(
        service.argv,
        env=env,
        cwd=service.cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stderr


@pytest.mark.slow  # a real process: imports torch
def test_aggregator_unit_refuses_to_start_without_its_tokens_file(tmp_path: Path) -> None:
    """No tokens file: exit 2 (no restart) with one line naming it, before serving anything."""
    code, stderr = _run_unit_without(tmp_path, role="aggregator", present={})
    assert code == 2
    missing = tmp_path / "vm/etc/tributary/tokens.txt"
    (line,) = [line for line in stderr.splitlines() if line.startswith("tributary-aggregator:")]
    assert f"cannot read the token file {missing}" in line
    assert "Traceback" not in stderr


@pytest.mark.slow  # a real process: imports torch
def test_worker_unit_refuses_to_start_without_its_token_file(tmp_path: Path) -> None:
    """A worker VM with its CA but no token file exits 2 naming the file, before any request."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the CA here")
    secrets = tmp_path / "secrets"
    subprocess.run(
        ["bash", str(VM / "tributary-secrets"), "tls", str(secrets), "IP:10.0.0.10"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    ca = (secrets / "ca.pem").read_bytes()
    code, stderr = _run_unit_without(tmp_path, role="worker", present={"/etc/tributary/ca.pem": ca})
    assert code == 2
    missing = tmp_path / "vm/etc/tributary/worker.token"
    assert f"cannot read the token file {missing}" in stderr
    assert "Traceback" not in stderr


def test_shipped_experiment_is_a_valid_ten_client_config() -> None:
    """deploy/experiment.yaml loads and describes ten partitions that all must register."""
    config = load_config(REPO / "deploy/experiment.yaml")
    assert config.num_partitions == 10
    assert config.min_available_clients == 10
    assert config.min_fit_clients <= config.min_available_clients
