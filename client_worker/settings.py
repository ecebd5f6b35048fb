"""A worker's own settings: where the aggregator is, who this client is, how to retry.

Values come from the defaults here, environment variables prefixed ``TRIBUTARY_WORKER_``
(``TRIBUTARY_WORKER_SERVER_URL=http://agg:8000``) and keyword arguments (the CLI flags),
highest priority last. The experiment itself (dataset, model, partitioning) is the shared
`ExperimentConfig`; these settings only say how this process takes part in it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from client_worker.device import MIB, DevicePlan
from client_worker.timeline import TimelineFile
from shared.config import ExperimentConfig
from shared.device import check_device_name, resolve_device
from shared.errors import ConfigError

__all__ = ["WorkerSettings"]

# Margin added to the long-poll wait for the read timeout: the server answers after `wait`
# seconds at the latest, so a read that takes longer than wait + margin is a dead peer.
READ_MARGIN_S = 30.0


class WorkerSettings(BaseSettings):
    """How one worker process connects to the aggregator and takes part in the federation."""

    model_config = SettingsConfigDict(env_prefix="TRIBUTARY_WORKER_", extra="forbid")

    server_url: str = "http://127.0.0.1:8000"
    client_id: str = "0"
    partition_id: int | None = Field(None, ge=0)  # default: the numeric client_id
    num_partitions: int | None = Field(None, ge=1)  # default: the experiment config's
    config_path: Path | None = None  # experiment YAML; None = defaults + environment
    data_dir: Path | None = None  # default: the experiment config's data_dir
    download: bool | None = None  # default: the experiment config's download

    # Timeouts are explicit and finite: a dead aggregator must not hang a worker forever.
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float | None = Field(None, gt=0)  # default: long_poll_wait_s + 30
    write_timeout_s: float = Field(60.0, gt=0)
    pool_timeout_s: float = Field(5.0, gt=0)
    long_poll_wait_s: float = Field(30.0, ge=0)

    # Exponential backoff with full jitter on connection errors, timeouts and 5xx.
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_cap_s: float = Field(30.0, gt=0)
    backoff_max_time_s: float = Field(600.0, gt=0)  # give up after this long without success

    stop_grace_s: float = Field(30.0, ge=0)  # after SIGTERM: time a round in progress gets
    max_rounds: int | None = Field(None, ge=1)  # bounded mode: exit after training this many
    # Intra-op threads for torch. Many workers (or virtual clients) usually share a few
    # cores; one thread each avoids oversubscription, which is slower than serial work.
    torch_threads: int = Field(1, ge=1)
    # At most this many of the process's virtual clients train at the same time (None: no
    # limit). One per core lets trainings run back to back instead of time-slicing the
    # cores; the other clients' downloads, encodes and uploads go on meanwhile.
    train_slots: int | None = Field(None, ge=1)
    seed: int | None = None  # network simulation and retry jitter; default: config seed
    # Where client algorithms keep state across rounds and restarts (SCAFFOLD's control
    # variate, ...): one directory per client id. None keeps it in memory only.
    state_dir: Path | None = Path("worker-state")
    # Append each client's phases (training, uploading, waiting, idle) to this JSON-lines
    # file (docs/worker.md, "Timeline"); None records nothing.
    timeline_path: Path | None = None

    # Where training runs (docs/worker.md, "Devices and GPUs"): auto is the first CUDA
    # device when torch sees one, else the CPU. fp16 needs CUDA; bf16 also runs on a CPU.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # On CUDA: a partition of at most this many MiB is held on the device for the training;
    # a larger one goes through pinned host buffers. 0: always through pinned buffers.
    device_data_budget_mb: int = Field(1024, ge=0)
    # On CUDA: virtual clients train on the GPU one after another, or together in a CUDA
    # stream each.
    gpu_sharing: Literal["sequential", "streams"] = "sequential"

    # Authentication and TLS (docs/security.md). The token comes from a file or the
    # environment (TRIBUTARY_WORKER_TOKEN), never from a command-line flag.
    token: SecretStr | None = None
    token_file: Path | None = None  # one token, or `client_id: token` lines
    ca_bundle: Path | None = None  # PEM CA certificates that sign the aggregator's certificate

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _check_timeouts(self) -> WorkerSettings:
        if self.read_timeout_s is not None and self.read_timeout_s <= self.long_poll_wait_s:
            raise ValueError(
                f"read_timeout_s ({self.read_timeout_s}) must exceed long_poll_wait_s "
                f"({self.long_poll_wait_s}): the server holds each poll that long"
            )
        if self.token is not None and self.token_file is not None:
            raise ValueError(
                "the token is given twice (token_file and TRIBUTARY_WORKER_TOKEN); keep one"
            )
        if self.backoff_base_s > self.backoff_cap_s:
            raise ValueError(
                f"backoff_base_s ({self.backoff_base_s}) exceeds backoff_cap_s "
                f"({self.backoff_cap_s})"
            )
        return self

    def http_timeout(self) -> httpx.Timeout:
        """Return the explicit connect/read/write/pool timeouts for the HTTP client."""
        read = self.read_timeout_s
        if read is None:
            read = self.long_poll_wait_s + READ_MARGIN_S
        return httpx.Timeout(
            connect=self.connect_timeout_s,
            read=read,
            write=self.write_timeout_s,
            pool=self.pool_timeout_s,
        )

    def resolved_token(self) -> str | None:
        """Return this client's bearer token (from the env or the token file), or None."""
        if self.token is not None:
            token = self.token.get_secret_value().strip()
            source = "TRIBUTARY_WORKER_TOKEN"
        elif self.token_file is not None:
            token, source = _token_from_file(self.token_file, self.client_id)
        else:
            return None
        if not token or any(c.isspace() for c in token):
            raise ConfigError(f"the token in {source} is empty or holds spaces")
        return token

    def ssl_verify(self) -> ssl.SSLContext | bool:
        """Return how the HTTP client verifies the server: the CA bundle, else the system CAs."""
        if self.ca_bundle is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA bundle {self.ca_bundle}: {exc}") from None

    def resolved_partition_id(self) -> int:
        """Return the partition this client trains on: partition_id, else the numeric id."""
        if self.partition_id is not None:
            return self.partition_id
        if not self.client_id.isdigit():
            raise ConfigError(
                f"client_id {self.client_id!r} is not a number; set partition_id "
                "(--partition-id or TRIBUTARY_WORKER_PARTITION_ID)"
            )
        return int(self.client_id)

    def resolved_num_partitions(self, config: ExperimentConfig) -> int:
        """Return num_partitions, defaulting to the experiment config's."""
        return self.num_partitions if self.num_partitions is not None else config.num_partitions

    def resolved_seed(self, config: ExperimentConfig) -> int:
        """Return the seed of this worker's own randomness, defaulting to the config's."""
        return self.seed if self.seed is not None else config.seed

    def device_plan(self) -> DevicePlan:
        """Return where and how to train; raise ConfigError if the device is not here."""
        return DevicePlan(
            device=resolve_device(self.device),
            precision=self.precision,
            data_budget_bytes=self.device_data_budget_mb * MIB,
        )

    def timeline_file(self) -> TimelineFile | None:
        """Return the file the clients' phases are appended to, or None without a path."""
        return TimelineFile(self.timeline_path) if self.timeline_path is not None else None

    def experiment_for_worker(self, config: ExperimentConfig) -> ExperimentConfig:
        """Return `config` with this worker's data_dir and download applied."""
        update: dict[str, object] = {}
        if self.data_dir is not None:
            update["data_dir"] = self.data_dir
        if self.download is not None:
            update["download"] = self.download
        return config.model_copy(update=update) if update else config


def _token_from_file(path: Path, client_id: str) -> tuple[str, str]:
    """Read a token file: one bare token, or `client_id: token` lines (this client's is taken)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) == 1 and ":" not in lines[0]:
        return lines[0], f"the token file {path}"
    for line in lines:
        owner, _, token = line.rpartition(":")  # tokens hold no ":", client ids may
        if owner.strip() == client_id:
            return token.strip(), f"the token file {path} (client {client_id!r})"
    raise ConfigError(f"the token file {path} has no token for client {client_id!r}")
