"""Settings of the aggregator process (the experiment itself is an ExperimentConfig)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.device import check_device_name

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
    max_queued_uploads: int = Field(64, ge=0)  # uploads waiting for a slot; more get 503
    upload_queue_timeout_s: float = Field(30.0, gt=0)  # waited this long for a slot: 503
    body_idle_timeout_s: float = Field(60.0, gt=0)  # no body byte this long: 408, slot freed
    min_upload_rate_bytes_s: float = Field(64 * 1024, ge=0)  # slower after the grace: 408
    upload_grace_s: float = Field(10.0, ge=0)  # ... a body's first seconds, at any rate
    max_long_polls: int = Field(1000, ge=0)  # requests held open at once; more get 503
    receive_rate: float = Field(2.0, ge=0)  # POST /receive per second per client; 0 = no limit
    receive_burst: int = Field(100, ge=1)  # ... and how many may come at once
    long_poll_max_s: float = Field(60.0, ge=0)
    client_timeout_s: float = Field(300.0, gt=0)  # unseen this long = not active
    exit_when_finished: bool = False
    finish_grace_s: float = Field(30.0, ge=0)  # keep serving "finished" this long before exiting
    log_level: str = "info"
    access_log: bool = True  # one log line per HTTP request
    malloc_arenas: int = Field(2, ge=0)  # glibc malloc arenas at most; 0 = glibc's default
    # Server-side evaluation (config server_eval): auto | cpu | cuda | cuda:N. The CPU by
    # default: a GPU on the aggregator's machine is usually the workers'.
    eval_device: str = "cpu"

    # Authentication: off (anyone may take part) unless a tokens file is given.
    tokens_file: Path | None = None  # `client_id: token` lines (docs/security.md)
    admin_token_file: Path | None = None  # one line: the admin token
    admin_token: SecretStr | None = None  # env TRIBUTARY_AGG_ADMIN_TOKEN only, never a flag
    viewer_token_file: Path | None = None  # one line: the read-only viewer token (dashboard)
    viewer_token: SecretStr | None = None  # env TRIBUTARY_AGG_VIEWER_TOKEN only, never a flag

    # TLS: serve HTTPS when both are given.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @field_validator("eval_device")
    @classmethod
    def _check_eval_device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _check_pairs(self) -> AggregatorSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("give both ssl_certfile and ssl_keyfile, or neither")
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError(
                "the admin token is given twice (admin_token_file and TRIBUTARY_AGG_ADMIN_TOKEN); "
                "keep one"
            )
        if self.viewer_token is not None and self.viewer_token_file is not None:
            raise ValueError(
                "the viewer token is given twice (viewer_token_file and "
                "TRIBUTARY_AGG_VIEWER_TOKEN); keep one"
            )
        return self

    @property
    def tls(self) -> bool:
        """Whether the aggregator serves HTTPS."""
        return self.ssl_certfile is not None
