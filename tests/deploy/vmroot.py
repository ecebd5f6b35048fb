"""A simulated VM file tree: deploy/vm/install.sh and tributary-role run against a temp root.

`install_machine` lays out what install.sh installs under `root`, writes role.env and the
machine's own files (what cloud-init's write_files or the operator put there: tokens, the
CA, certificates) and runs `tributary-role apply` with a recording systemctl;
`service_command` then turns the unit it enabled into the argv, environment and working
directory systemd would use, with every path of the VM (/etc/tributary, /var/lib,
/opt/tributary) moved under `root`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.helpers import (
    VM,
    exec_start_argv,
    parse_env_file,
    parse_unit,
    unit_environment,
    unit_values,
)

__all__ = ["Service", "fake_systemctl", "install_machine", "run_role", "service_command"]

_VM_PATHS = ("/etc/tributary", "/var/lib/", "/opt/tributary")
_SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PASSED_THROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # see the machine's notes


@dataclass(frozen=True)
class Service:
    """How systemd would start one unit of a simulated VM."""

    unit: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def fake_systemctl(directory: Path) -> Path:
    """Write a systemctl stand-in that appends its arguments to $SYSTEMCTL_LOG."""
    script = directory / "systemctl"
    script.write_text('#!/bin/sh\nprintf \'%s\\n\' "$*" >>"$SYSTEMCTL_LOG"\n')
    script.chmod(0o755)
    return script


def run_role(
    root: Path, *args: str, hostname: str, systemctl: Path, log: Path
) -> subprocess.CompletedProcess[str]:
    """Run deploy/vm/tributary-role against `root` (output captured, no check)."""
    env = {
        "PATH": os.environ.get("PATH", _SYSTEMD_PATH),
        "SYSTEMCTL": str(systemctl),
        "SYSTEMCTL_LOG": str(log),
        "TRIBUTARY_HOSTNAME": hostname,
    }
    return subprocess.run(
        ["bash", str(VM / "tributary-role"), "--root", str(root), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def install_machine(
    root: Path,
    *,
    role_env: str,
    hostname: str,
    experiment: str,
    files: Mapping[str, bytes] | None = None,
) -> str:
    """Install a VM tree under `root`, select its role and return the unit it enabled.

    `files` maps absolute VM paths to contents, written (mode 0600) before the role is applied.
    """
    root.mkdir(parents=True, exist_ok=True)
    systemctl = fake_systemctl(root)
    log = root / "systemctl.log"
    env = {"PATH": os.environ.get("PATH", _SYSTEMD_PATH), "SYSTEMCTL": str(systemctl)}
    env["SYSTEMCTL_LOG"] = str(log)
    subprocess.run(
        ["bash", str(VM / "install.sh"), "--root", str(root), "--skip-python"],
        env=env,
        capture_output=True,
        timeout=30,
        check=True,
    )
    (root / "etc/tributary/role.env").write_text(role_env)
    (root / "etc/tributary/experiment.yaml").write_text(experiment)
    for vm_path, content in (files or {}).items():
        target = Path(rooted(vm_path, root))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o600)
    venv = root / "opt/tributary/venv"
    venv.parent.mkdir(parents=True, exist_ok=True)
    venv.symlink_to(Path(sys.prefix))
    done = run_role(root, "apply", hostname=hostname, systemctl=systemctl, log=log)
    if done.returncode != 0:
        raise RuntimeError(f"tributary-role failed: {done.stderr}")
    enabled = [line.split()[-1] for line in log.read_text().splitlines() if " enable " in line]
    return enabled[-1]


def rooted(value: str, root: Path) -> str:
    """Move a VM path under `root`; leave anything else as it is."""
    return f"{root}{value}" if value.startswith(_VM_PATHS) else value


def service_command(root: Path, unit_name: str) -> Service:
    """Return the argv, environment and working directory of `unit_name` on the VM at root."""
    template, at, rest = unit_name.partition("@")
    instance = rest.removesuffix(".service") if at else None
    file_name = f"{template}@.service" if at else unit_name
    unit = parse_unit(root / "etc/systemd/system" / file_name)
    env = {"PATH": _SYSTEMD_PATH, "LANG": "C.UTF-8"}
    env |= {key: os.environ[key] for key in _PASSED_THROUGH if key in os.environ}
    for env_file in unit_values(unit, "Service", "EnvironmentFile"):
        optional = env_file.startswith("-")
        path = Path(rooted(env_file.removeprefix("-"), root))
        if path.exists() or not optional:
            env |= parse_env_file(path)
    env |= unit_environment(unit)
    env = {key: rooted(value, root) for key, value in env.items()}
    for state in unit_values(unit, "Service", "StateDirectory"):
        for name in state.split():
            (root / "var/lib" / name).mkdir(parents=True, exist_ok=True)
    argv = [rooted(word, root) for word in exec_start_argv(unit, instance=instance, env=env)]
    (cwd,) = unit_values(unit, "Service", "WorkingDirectory") or ["/"]
    return Service(unit=unit_name, argv=argv, env=env, cwd=Path(rooted(cwd, root)))
