"""Readers for the deployment files: systemd units, environment files, manifests, variables."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from aggregator_service.settings import AggregatorSettings
from client_worker.settings import WorkerSettings
from shared.config import ExperimentConfig

__all__ = [
    "DEPLOY",
    "K8S",
    "REPO",
    "VM",
    "Unit",
    "exec_start_argv",
    "load_yaml_documents",
    "parse_env_file",
    "parse_unit",
    "unit_environment",
    "unit_values",
    "unknown_variables",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VM = DEPLOY / "vm"
K8S = DEPLOY / "k8s"

# Variables that the deployment files define for their own scripts, not for Python settings.
DEPLOYMENT_VARIABLES = frozenset(
    {"TRIBUTARY_ROLE", "TRIBUTARY_POD_NAME", "TRIBUTARY_AGGREGATOR_URL", "TRIBUTARY_CLIENT_ID"}
)

Unit = dict[str, list[tuple[str, str]]]  # section -> (key, value) in file order


def parse_unit(path: Path) -> Unit:
    """Parse a systemd unit file into its sections' key/value pairs (repeated keys kept)."""
    unit: Unit = {}
    section: str | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        if section is None or not sep:
            raise ValueError(f"{path}:{number}: {raw!r} is neither a section nor key=value")
        unit[section].append((key.strip(), value.strip()))
    return unit


def unit_values(unit: Unit, section: str, key: str) -> list[str]:
    """Return every value of `key` in `section`, in file order."""
    return [value for k, value in unit.get(section, []) if k == key]


def parse_env_file(path: Path) -> dict[str, str]:
    """Read a systemd EnvironmentFile: KEY=value lines, # comments, optional quotes."""
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ValueError(f"{path}:{number}: {raw!r} is not KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def exec_start_argv(unit: Unit, *, instance: str | None, env: Mapping[str, str]) -> list[str]:
    """Return ExecStart as argv, with %i and $VAR / ${VAR} expanded the way systemd does."""
    (command,) = unit_values(unit, "Service", "ExecStart")
    if instance is not None:
        command = command.replace("%i", instance)
    if "%" in command:
        raise ValueError(f"ExecStart {command!r} has a specifier this reader does not expand")

    def expand(word: str) -> list[str]:
        whole = re.fullmatch(r"\$(\w+)", word)
        if whole:  # $VAR alone splits at whitespace
            return env.get(whole.group(1), "").split()
        return [re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word)]

    return [part for word in shlex.split(command) for part in expand(word)]


def unit_environment(unit: Unit) -> dict[str, str]:
    """Return the unit's Environment= assignments."""
    env: dict[str, str] = {}
    for assignments in unit_values(unit, "Service", "Environment"):
        for item in shlex.split(assignments):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def load_yaml_documents(path: Path) -> list[Any]:
    """Return the non-empty YAML documents of a file."""
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def unknown_variables(names: Iterable[str]) -> list[str]:
    """Return the TRIBUTARY_* names that no settings class nor deployment script reads."""
    agg = {name.upper() for name in AggregatorSettings.model_fields}
    worker = {name.upper() for name in WorkerSettings.model_fields}
    experiment = {name.upper() for name in ExperimentConfig.model_fields}
    unknown = []
    for name in names:
        if not name.startswith("TRIBUTARY_") or name in DEPLOYMENT_VARIABLES:
            continue
        if name.startswith("TRIBUTARY_AGG_"):
            known = name.removeprefix("TRIBUTARY_AGG_") in agg
        elif name.startswith("TRIBUTARY_WORKER_"):
            known = name.removeprefix("TRIBUTARY_WORKER_") in worker
        else:
            known = name.removeprefix("TRIBUTARY_").split("__")[0] in experiment
        if not known:
            unknown.append(name)
    return unknown
