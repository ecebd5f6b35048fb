"""Loading the experiment config: defaults < YAML file < environment < overrides, checked.

Environment variables are ``TRIBUTARY_NUM_ROUNDS=5``, nested with ``__``:
``TRIBUTARY_PARTITION__ALPHA``; command-line overrides are ``--set num_rounds=5``. Unknown
keys are an error that names the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource

from shared.config.experiment import ENV_PREFIX, ExperimentConfig
from shared.config.strategies import with_named_strategy
from shared.errors import ConfigError

__all__ = ["config_source", "load_config", "parse_overrides"]


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Build the config from defaults < YAML file < environment < overrides."""
    try:
        return ExperimentConfig.model_validate(config_source(path, overrides))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def config_source(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return the YAML file, environment and overrides merged, before validation."""
    data = _read_yaml(Path(path)) if path is not None else {}
    env = EnvSettingsSource(ExperimentConfig, env_prefix=ENV_PREFIX, env_nested_delimiter="__")()
    sources = [with_named_strategy(s) for s in (data, env, dict(overrides or {}))]
    return _deep_merge(_deep_merge(sources[0], sources[1]), sources[2])


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["num_rounds=5", "partition.alpha=0.3"]`` into a nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping of keys to values")
    return data


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError, path: str | Path | None) -> str:
    where = f" in {path}" if path is not None else ""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        else:
            lines.append(f"{key}: {err['msg']}")
    return f"invalid experiment config{where}: " + "; ".join(lines)
