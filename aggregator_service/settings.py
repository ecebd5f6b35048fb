"""Settings of the aggregator process (the experiment itself is an ExperimentConfig)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AggregatorSettings"]

MIB = 1 << 20


class AggregatorSettings(BaseSettings):
    """How the aggregator runs: address, state directory, limits (env prefix TRIBUTARY_AGG_)."""

    model_config = SettingsConfigDict(env_prefix="TRIBUTARY_AGG_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    config: Path | None = None  # experiment YAML; defaults otherwise
    state_dir: Path = Path("state")
    persist_updates: bool = True  # fsync each accepted update before answering
    max_body_bytes: int = Field(512 * MIB, ge=1024)
    max_concurrent_uploads: int = Field(2, ge=1)  # bodies held in memory at once
    long_poll_max_s: float = Field(60.0, ge=0)
    client_timeout_s: float = Field(300.0, gt=0)  # unseen this long = not active
    exit_when_finished: bool = False
    log_level: str = "info"
