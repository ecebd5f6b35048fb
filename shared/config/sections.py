"""The experiment config's data, network and attack sections (the strategy's: strategies.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ByzantineProfile",
    "DatasetName",
    "GaussianAttack",
    "NetworkProfile",
    "PartitionConfig",
    "PartitionName",
    "Section",
    "SignFlipAttack",
    "SyntheticConfig",
]

DatasetName = Literal["mnist5k", "mnist", "fashion-mnist", "cifar10", "synthetic"]


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


PartitionName = Literal[
    "iid", "shards", "dirichlet", "classes", "labels_per_client", "quantity", "feature_noise"
]


class PartitionConfig(Section):
    """How the training split is divided among `num_partitions` clients (see shared/partition)."""

    name: PartitionName = "iid"
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration (the papers' beta): small = skewed
    min_size: int = Field(10, ge=0)  # dirichlet, quantity: redraw until each client has this many
    balance: bool = False  # dirichlet: NIID-Bench's cap, no class to a client past n / N examples
    shards_per_client: int = Field(2, ge=1)  # McMahan et al. 2017 pathological non-IID
    classes: list[list[int]] | None = None  # `classes`: the labels of each partition
    k: int = Field(2, ge=1)  # labels_per_client (#C=k): the distinct labels of each client
    sigma: float = Field(0.1, ge=0)  # feature_noise: client i's noise std is sigma * i / (N - 1)


class SyntheticConfig(Section):
    """Shape of the `synthetic` dataset: random images with learnable class structure."""

    channels: int = Field(3, ge=1)
    image_size: int = Field(32, ge=4)
    num_classes: int = Field(10, ge=2)
    train_size: int = Field(2000, ge=1)
    test_size: int = Field(500, ge=1)


class NetworkProfile(Section):
    """Simulated network conditions for a set of clients (all off by default)."""

    clients: str = "all"  # "all", "7-9", "0,2,5"
    latency_ms: float = Field(0.0, ge=0)  # fixed delay before each request
    jitter: Literal["none", "exponential", "normal"] = "none"
    jitter_ms: float = Field(0.0, ge=0)  # mean (exponential) or std-dev (normal)
    bandwidth_mbit: float | None = Field(None, gt=0)  # cap on upload and download
    dropout: float = Field(0.0, ge=0, le=1)  # probability of skipping a round
    crash: float = Field(0.0, ge=0, le=1)  # probability of crashing mid-training
    slowdown: float = Field(1.0, ge=1.0)  # compute: training takes this many times longer


class SignFlipAttack(Section):
    """Simulated byzantine clients that send global - scale * (trained - global)."""

    attack: Literal["sign_flip"]
    clients: str  # as in network profiles: "7-9", "0,2,5", "all"
    scale: float = Field(10.0, gt=0)  # how far past the global model the flipped update goes


class GaussianAttack(Section):
    """Simulated byzantine clients that send global + N(0, std^2) noise, not what they trained."""

    attack: Literal["gaussian"]
    clients: str
    std: float = Field(1.0, gt=0)  # docs/worker.md says why this default


ByzantineProfile = Annotated[SignFlipAttack | GaussianAttack, Field(discriminator="attack")]
