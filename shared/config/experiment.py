"""The whole experiment config: its settings, their cross-checks and what derives from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypedDict

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config.asynchronous import AsyncConfig, check_async
from shared.config.compression import CompressionConfig
from shared.config.download import DownloadCompressionConfig
from shared.config.dp_sgd import DpSgdConfig
from shared.config.privacy import check_dp_fedavg, with_dp_counts
from shared.config.secagg import SecAggConfig
from shared.config.sections import (
    ByzantineProfile,
    DatasetName,
    NetworkProfile,
    PartitionConfig,
    SyntheticConfig,
)
from shared.config.strategies import (
    DPFedAvgConfig,
    FedAvgConfig,
    FedMedianConfig,
    FedProxConfig,
    FedTrimmedAvgConfig,
    KrumConfig,
    ScaffoldConfig,
    StrategyConfig,
)

__all__ = ["ENV_PREFIX", "ExperimentConfig", "ModelArgs", "ModelInitArgs"]

ENV_PREFIX = "TRIBUTARY_"


class ModelArgs(TypedDict):
    """build_model's keyword arguments for a dataset."""

    in_channels: int
    num_classes: int
    image_size: int


class ModelInitArgs(TypedDict):
    """init_global_weights' keyword arguments beyond the seed and the dataset's."""

    pretrained: str | None
    trainable: list[str]
    allow_download: bool


class ExperimentConfig(BaseSettings):
    """Everything that defines one federated experiment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    name: str = "experiment"
    seed: int = 0

    # data: each client loads `dataset` and keeps only its own partition
    dataset: DatasetName = "mnist5k"
    data_dir: Path = Path("data")
    download: bool = False
    synthetic: SyntheticConfig = SyntheticConfig()
    num_partitions: int = Field(10, ge=1)
    partition: PartitionConfig = PartitionConfig()

    # model and local training (sent to the workers with every round)
    model: str = "mlp"  # a name of shared.models.MODEL_NAMES
    # torchvision weights ("ResNet18_Weights.IMAGENET1K_V1", from the torch hub cache) or the
    # path of a .safetensors / torch.save'd state dict; None = a fresh seeded initialisation
    pretrained: str | None = None
    pretrained_download: bool = False  # fetch torchvision weights missing from the hub cache
    trainable: list[str] = []  # fnmatch patterns of the tensors that train; [] = all of them
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    mu: float = Field(0.0, ge=0)  # FedProx's weight under any server rule; 0 = none

    # personalization (shared/exchange.py): tensors each client keeps, never sent or averaged
    local_layers: list[str] = []  # FedPer: name patterns, e.g. ["fc.*"]
    fedbn: bool = False  # FedBN: every BatchNorm layer's parameters and statistics
    # each client holds this share of its partition out of training and reports the
    # accuracy there of the model it holds at the round's start (global or personalized)
    local_test_fraction: float = Field(0.0, ge=0, lt=1)

    # federation (Flower's names)
    num_rounds: int = Field(10, ge=1)
    fraction_fit: float = Field(1.0, gt=0, le=1)
    min_fit_clients: int = Field(2, ge=1)
    min_available_clients: int = Field(2, ge=1)
    # after the counts, which its validator reads (DP-FedAvg's m is drawn as selection does)
    strategy: StrategyConfig = FedAvgConfig()  # name and typed parameters
    close_at_threshold: bool = False  # close a round as soon as min_fit_clients reported
    round_timeout_s: float = Field(300.0, gt=0)  # async mode: how long a client may train
    server_eval: bool = True
    # sync: rounds with a barrier; async: versions made of buffered updates (`async:` section)
    mode: Literal["sync", "async"] = "sync"
    asynchronous: AsyncConfig = Field(AsyncConfig(), alias="async")

    # updates as encoded deltas (shared/config/compression.py); None: full float weights
    compression: CompressionConfig | None = None
    # the global model sent as encoded steps (shared/config/download.py); None: full weights
    download_compression: DownloadCompressionConfig | None = None
    # sample-level DP-SGD in every client's local training (shared/config/dp_sgd.py)
    dp_sgd: DpSgdConfig | None = None
    secagg: SecAggConfig = SecAggConfig()  # secure aggregation (docs/privacy.md)

    network: list[NetworkProfile] = []
    byzantine: list[ByzantineProfile] = []  # for experiments: clients that send attacks

    @field_validator("strategy")
    @classmethod
    def _scaffold_counts_the_partitions(cls, value: Any, info: ValidationInfo) -> Any:
        """Give SCAFFOLD's num_clients (N) its default: one client per partition."""
        if isinstance(value, ScaffoldConfig) and value.num_clients is None:
            num_partitions = info.data.get("num_partitions")  # absent when itself invalid
            return value.model_copy(update={"num_clients": num_partitions})
        if isinstance(value, DPFedAvgConfig):
            return with_dp_counts(value, info.data)
        return value

    @model_validator(mode="after")
    def _check_dp_fedavg(self) -> ExperimentConfig:
        if isinstance(self.strategy, DPFedAvgConfig):
            check_dp_fedavg(self.strategy, mu=self.mu)
        return self

    @model_validator(mode="after")
    def _check_counts(self) -> ExperimentConfig:
        if self.min_fit_clients > self.min_available_clients:
            raise ValueError(
                f"min_fit_clients ({self.min_fit_clients}) exceeds "
                f"min_available_clients ({self.min_available_clients})"
            )
        return self

    @model_validator(mode="after")
    def _check_async(self) -> ExperimentConfig:
        if self.mode == "sync":
            if self.asynchronous != AsyncConfig():
                raise ValueError("the async section applies to mode: async only; set mode: async")
            return self
        check_async(
            self.asynchronous,
            strategy=self.strategy,
            secagg=self.secagg.enabled,
            fraction_fit=self.fraction_fit,
            close_at_threshold=self.close_at_threshold,
            download_compression=self.download_compression is not None,
        )
        return self

    @model_validator(mode="after")
    def _check_krum(self) -> ExperimentConfig:
        # a round aggregates at least min_fit_clients updates: Krum needs n > 2f + 2, m <= n
        krum, n, label = self.strategy, self.min_fit_clients, "min_fit_clients"
        if self.mode == "async":  # a version aggregates its buffer
            n, label = self.asynchronous.buffer, "async.buffer_size"
        if isinstance(krum, KrumConfig):
            if n <= 2 * krum.num_malicious_clients + 2:
                raise ValueError(
                    f"strategy.krum.num_malicious_clients ({krum.num_malicious_clients}) needs "
                    f"rounds of more than {2 * krum.num_malicious_clients + 2} updates "
                    f"(2f + 2); {label} is {n}"
                )
            if krum.num_clients_to_keep > n:
                raise ValueError(
                    f"strategy.krum.num_clients_to_keep ({krum.num_clients_to_keep}) exceeds "
                    f"{label} ({n})"
                )
        return self

    @model_validator(mode="after")
    def _check_client_algorithm(self) -> ExperimentConfig:
        strategy = self.strategy
        if isinstance(strategy, FedProxConfig) and self.mu not in (0.0, strategy.mu):
            default = "" if "mu" in strategy.model_fields_set else " (its default)"
            raise ValueError(
                f"mu is set twice: {self.mu} at the top level, {strategy.mu} as "
                f"strategy.mu{default}; with strategy fedprox set strategy.mu only"
            )
        if not isinstance(strategy, ScaffoldConfig):
            return self
        if self.mu > 0:
            raise ValueError(
                f"mu ({self.mu}) is FedProx's proximal weight, which SCAFFOLD's clients do "
                "not use: remove mu, or use strategy fedprox"
            )
        if self.momentum > 0 and not strategy.allow_momentum:
            raise ValueError(
                f"momentum ({self.momentum}) must be 0 with SCAFFOLD: its control variate "
                "update (option II) assumes plain local SGD; set strategy.allow_momentum: "
                "true to run it with momentum anyway (as NIID-Bench does)"
            )
        if (strategy.num_clients or 0) < self.min_fit_clients:
            raise ValueError(
                f"strategy.num_clients ({strategy.num_clients}), SCAFFOLD's number of clients "
                f"N, is below min_fit_clients ({self.min_fit_clients}): every round would "
                "have more updates than the federation has clients"
            )
        return self

    @model_validator(mode="after")
    def _check_compression(self) -> ExperimentConfig:
        compression, strategy = self.compression, self.strategy
        robust = (FedMedianConfig, FedTrimmedAvgConfig, KrumConfig)
        if compression is not None and isinstance(strategy, robust):
            how = "sparse (every coordinate not sent is zero-filled)"
            how = how if compression.encoding == "topk" else "lossy (quantized)"
            raise ValueError(
                f"compression.encoding {compression.encoding!r} cannot be used with strategy "
                f"{strategy.name!r}: the updates would be {how}, and a byzantine-robust "
                "rule's guarantees are about honest clients' full updates, so its ranking "
                "of the updates would judge the encoding's error, not the clients; use a "
                "mean-based strategy (fedavg, fedprox, fedavgm, fedadam, scaffold, ...) or "
                "remove compression"
            )
        if (
            compression is not None
            and isinstance(strategy, DPFedAvgConfig)
            and strategy.clipping == "client"
        ):
            raise ValueError(
                f"compression.encoding {compression.encoding!r} cannot be used with "
                "dpfedavg's clipping: client: the encoded delta (quantized, or top-k of the "
                "delta plus the error-feedback residual) can have a norm past clip_norm, "
                "which the aggregator refuses; use clipping: server"
            )
        if compression is not None and self.secagg.enabled:
            raise ValueError(
                f"compression.encoding {compression.encoding!r} cannot be used with secure "
                "aggregation: a masked update is a vector of the ring Z_2^32 that the "
                "aggregator can only add up, not an encoded delta it can decode; remove one"
            )
        return self

    @model_validator(mode="after")
    def _check_secagg(self) -> ExperimentConfig:
        secagg = self.secagg
        if not secagg.enabled:
            return self
        if self.min_fit_clients < 2:
            raise ValueError(
                "secure aggregation needs min_fit_clients >= 2: the sum of one update is the update"
            )
        if isinstance(self.strategy, DPFedAvgConfig) and self.strategy.clipping != "client":
            raise ValueError(
                "strategy dpfedavg under secure aggregation needs strategy.clipping: client: "
                "the aggregator sees only the sum, so it cannot clip each update"
            )
        if isinstance(self.strategy, DPFedAvgConfig) and secagg.weighting != "uniform":
            raise ValueError(
                "strategy dpfedavg weighs every client 1: secagg.weighting must be uniform"
            )
        holders = secagg.holders(self.min_fit_clients)
        if secagg.threshold is not None and secagg.threshold > holders:
            raise ValueError(
                f"secagg.threshold ({secagg.threshold}) exceeds the {holders} clients holding "
                f"shares of each client's secrets in a round of min_fit_clients "
                f"({self.min_fit_clients})"
            )
        if self.num_partitions > secagg.max_clients():
            raise ValueError(
                f"num_partitions ({self.num_partitions}) clients of secagg.quantization_range "
                f"({secagg.quantization_range}) levels could sum past the modulus "
                f"({secagg.modulus}): at most {secagg.max_clients()} clients; lower "
                "quantization_range or raise the modulus"
            )
        return self

    def proximal_mu(self) -> float:
        """Return the FedProx weight the clients use: strategy fedprox's, else the top-level mu."""
        return self.strategy.mu if isinstance(self.strategy, FedProxConfig) else self.mu

    def model_args(self) -> ModelArgs:
        """Return build_model's keyword arguments for this dataset."""
        if self.dataset == "synthetic":
            s = self.synthetic
            return {
                "in_channels": s.channels,
                "num_classes": s.num_classes,
                "image_size": s.image_size,
            }
        if self.dataset == "cifar10":
            return {"in_channels": 3, "num_classes": 10, "image_size": 32}
        return {"in_channels": 1, "num_classes": 10, "image_size": 28}

    def model_init_args(self) -> ModelInitArgs:
        """Return init_global_weights' keyword arguments beyond the seed and the dataset."""
        return {
            "pretrained": self.pretrained,
            "trainable": list(self.trainable),
            "allow_download": self.pretrained_download,
        }

    def round_config(self) -> dict[str, Any]:
        """Return the training settings the aggregator sends with each round."""
        keys = ["model", "dataset", "local_epochs", "batch_size", "lr", "momentum"]
        keys += ["weight_decay", "mu", "seed", "num_partitions", "local_layers", "fedbn"]
        keys += ["trainable"]
        config = {key: getattr(self, key) for key in keys} | {"strategy": self.strategy.name}
        config["mu"] = self.proximal_mu()  # strategy fedprox's own mu, when it is the strategy
        if self.compression is not None:
            config["compression"] = self.compression.announced()
        if self.download_compression is not None:
            config["download_compression"] = self.download_compression.announced()
        if self.dp_sgd is not None:
            config["dp_sgd"] = self.dp_sgd.round_config()
        if self.secagg.enabled:
            config["secagg"] = self.secagg.model_dump(exclude={"enabled"})
        if self.mode == "async":
            config["async"] = self.asynchronous.announced()
        return config
