"""One experiment config, shared by the aggregator and every worker.

Values come, lowest priority first, from the defaults here, a YAML file, environment
variables (``TRIBUTARY_NUM_ROUNDS=5``, nested with ``__``: ``TRIBUTARY_PARTITION__ALPHA``)
and command-line overrides (``--set num_rounds=5``). Unknown keys are an error that
names the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from shared.errors import ConfigError

__all__ = [
    "ByzantineProfile",
    "DatasetName",
    "ExperimentConfig",
    "GaussianAttack",
    "ModelArgs",
    "ModelInitArgs",
    "NetworkProfile",
    "PartitionConfig",
    "PartitionName",
    "SignFlipAttack",
    "StrategyConfig",
    "config_source",
    "load_config",
    "parse_overrides",
]

ENV_PREFIX = "TRIBUTARY_"
DatasetName = Literal["mnist5k", "mnist", "fashion-mnist", "cifar10", "synthetic"]


class _Strict(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


PartitionName = Literal[
    "iid", "shards", "dirichlet", "classes", "labels_per_client", "quantity", "feature_noise"
]


class PartitionConfig(_Strict):
    """How the training split is divided among `num_partitions` clients (see shared/partition)."""

    name: PartitionName = "iid"
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration (the papers' beta): small = skewed
    min_size: int = Field(10, ge=0)  # dirichlet, quantity: redraw until each client has this many
    balance: bool = False  # dirichlet: NIID-Bench's cap, no class to a client past n / N examples
    shards_per_client: int = Field(2, ge=1)  # McMahan et al. 2017 pathological non-IID
    classes: list[list[int]] | None = None  # `classes`: the labels of each partition
    k: int = Field(2, ge=1)  # labels_per_client (#C=k): the distinct labels of each client
    sigma: float = Field(0.1, ge=0)  # feature_noise: client i's noise std is sigma * i / (N - 1)


class FedAvgConfig(_Strict):
    """FedAvg (McMahan et al. 2017): the weighted mean; no parameters."""

    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(_Strict):
    """FedAvgM (Hsu et al. 2019): FedAvg plus server momentum on the pseudo-gradient."""

    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0)  # eta: the server's step size
    momentum: float = Field(0.9, ge=0, lt=1)  # beta


class FedMedianConfig(_Strict):
    """FedMedian (Yin et al. 2018): the coordinate-wise median; no parameters."""

    name: Literal["fedmedian"] = "fedmedian"


class FedProxConfig(_Strict):
    """FedProx (Li et al. 2020): FedAvg on the server; mu goes to the clients' proximal term."""

    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0)  # the proximal weight of each client's local objective


class ScaffoldConfig(_Strict):
    """SCAFFOLD (Karimireddy et al. 2020): control variates correct the clients' drift."""

    name: Literal["scaffold"] = "scaffold"
    server_lr: float = Field(1.0, gt=0)  # eta_g: the server's global step size
    num_clients: int | None = Field(None, ge=1)  # N in c's update; None: num_partitions
    # option II assumes plain local SGD; NIID-Bench runs it with momentum all the same
    allow_momentum: bool = False


class _FedOptParams(_Strict):
    """Parameters shared by the FedOpt strategies (Reddi et al. 2021, Algorithm 2)."""

    eta: float = Field(1e-2, gt=0)  # the server's learning rate
    beta_1: float = Field(0.9, ge=0, lt=1)  # first-moment decay
    tau: float = Field(1e-3, gt=0)  # adaptivity: added to sqrt(v); v starts at tau**2


class FedAdagradConfig(_FedOptParams):
    """FedAdagrad (Reddi et al. 2021): an Adagrad step on the server's pseudo-gradient."""

    name: Literal["fedadagrad"] = "fedadagrad"


class FedAdamConfig(_FedOptParams):
    """FedAdam (Reddi et al. 2021): an Adam step on the server's pseudo-gradient."""

    name: Literal["fedadam"] = "fedadam"
    beta_2: float = Field(0.99, ge=0, lt=1)  # second-moment decay


class FedYogiConfig(_FedOptParams):
    """FedYogi (Reddi et al. 2021): a Yogi step on the server's pseudo-gradient."""

    name: Literal["fedyogi"] = "fedyogi"
    beta_2: float = Field(0.99, ge=0, lt=1)  # second-moment decay


class FedTrimmedAvgConfig(_Strict):
    """FedTrimmedAvg (Yin et al. 2018): the coordinate-wise trimmed mean."""

    name: Literal["fedtrimmedavg"] = "fedtrimmedavg"
    beta: float = Field(0.2, ge=0, lt=0.5)  # share of the updates cut from EACH end


class KrumConfig(_Strict):
    """Krum (Blanchard et al. 2017): keep the updates closest to their neighbours."""

    name: Literal["krum"] = "krum"
    num_malicious_clients: int = Field(0, ge=0)  # f: rounds need more than 2f + 2 updates
    num_clients_to_keep: int = Field(1, ge=1)  # m: 1 = Krum, more = multi-Krum's mean of m


def _named(value: Any) -> Any:
    """Let `strategy: fedavgm` stand for `strategy: {name: fedavgm}`."""
    return {"name": value} if isinstance(value, str) else value


StrategyConfig = Annotated[
    FedAvgConfig
    | FedAvgMConfig
    | FedMedianConfig
    | FedProxConfig
    | ScaffoldConfig
    | FedAdagradConfig
    | FedAdamConfig
    | FedYogiConfig
    | FedTrimmedAvgConfig
    | KrumConfig,
    Field(discriminator="name"),
    BeforeValidator(_named),
]


class SyntheticConfig(_Strict):
    """Shape of the `synthetic` dataset: random images with learnable class structure."""

    channels: int = Field(3, ge=1)
    image_size: int = Field(32, ge=4)
    num_classes: int = Field(10, ge=2)
    train_size: int = Field(2000, ge=1)
    test_size: int = Field(500, ge=1)


class NetworkProfile(_Strict):
    """Simulated network conditions for a set of clients (all off by default)."""

    clients: str = "all"  # "all", "7-9", "0,2,5"
    latency_ms: float = Field(0.0, ge=0)  # fixed delay before each request
    jitter: Literal["none", "exponential", "normal"] = "none"
    jitter_ms: float = Field(0.0, ge=0)  # mean (exponential) or std-dev (normal)
    bandwidth_mbit: float | None = Field(None, gt=0)  # cap on upload and download
    dropout: float = Field(0.0, ge=0, le=1)  # probability of skipping a round
    crash: float = Field(0.0, ge=0, le=1)  # probability of crashing mid-training


class SignFlipAttack(_Strict):
    """Simulated byzantine clients that send global - scale * (trained - global)."""

    attack: Literal["sign_flip"]
    clients: str  # as in network profiles: "7-9", "0,2,5", "all"
    scale: float = Field(10.0, gt=0)  # how far past the global model the flipped update goes


class GaussianAttack(_Strict):
    """Simulated byzantine clients that send global + N(0, std^2) noise, not what they trained."""

    attack: Literal["gaussian"]
    clients: str
    std: float = Field(1.0, gt=0)  # docs/worker.md says why this default


ByzantineProfile = Annotated[SignFlipAttack | GaussianAttack, Field(discriminator="attack")]


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
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
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
    strategy: StrategyConfig = FedAvgConfig()  # name and typed parameters
    num_rounds: int = Field(10, ge=1)
    fraction_fit: float = Field(1.0, gt=0, le=1)
    min_fit_clients: int = Field(2, ge=1)
    min_available_clients: int = Field(2, ge=1)
    close_at_threshold: bool = False  # close a round as soon as min_fit_clients reported
    round_timeout_s: float = Field(300.0, gt=0)
    server_eval: bool = True

    network: list[NetworkProfile] = []
    byzantine: list[ByzantineProfile] = []  # for experiments: clients that send attacks

    @field_validator("strategy")
    @classmethod
    def _scaffold_counts_the_partitions(cls, value: Any, info: ValidationInfo) -> Any:
        """Give SCAFFOLD's num_clients (N) its default: one client per partition."""
        if isinstance(value, ScaffoldConfig) and value.num_clients is None:
            num_partitions = info.data.get("num_partitions")  # absent when itself invalid
            return value.model_copy(update={"num_clients": num_partitions})
        return value

    @model_validator(mode="after")
    def _check_counts(self) -> ExperimentConfig:
        if self.min_fit_clients > self.min_available_clients:
            raise ValueError(
                f"min_fit_clients ({self.min_fit_clients}) exceeds "
                f"min_available_clients ({self.min_available_clients})"
            )
        return self

    @model_validator(mode="after")
    def _check_krum(self) -> ExperimentConfig:
        krum, n = self.strategy, self.num_partitions
        if isinstance(krum, KrumConfig):
            if n <= 2 * krum.num_malicious_clients + 2:
                raise ValueError(
                    f"strategy.krum.num_malicious_clients ({krum.num_malicious_clients}) needs "
                    f"more than {2 * krum.num_malicious_clients + 2} clients (2f + 2); "
                    f"num_partitions is {n}"
                )
            if krum.num_clients_to_keep > n:
                raise ValueError(
                    f"strategy.krum.num_clients_to_keep ({krum.num_clients_to_keep}) exceeds "
                    f"num_partitions ({n})"
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
        return config


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
    sources = [_with_named_strategy(s) for s in (data, env, dict(overrides or {}))]
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


def _with_named_strategy(source: Mapping[str, Any]) -> dict[str, Any]:
    """Spell `strategy: NAME` as `strategy: {name: NAME}`, so a later source can add keys."""
    out = dict(source)
    if "strategy" in out:
        out["strategy"] = _named(out["strategy"])
    return out


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
