"""The experiment config's strategy section: one class of typed parameters per server rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from shared.config.sections import Section

__all__ = [
    "DPFedAvgConfig",
    "FedAdagradConfig",
    "FedAdamConfig",
    "FedAvgConfig",
    "FedAvgMConfig",
    "FedMedianConfig",
    "FedProxConfig",
    "FedTrimmedAvgConfig",
    "FedYogiConfig",
    "KrumConfig",
    "ScaffoldConfig",
    "StrategyConfig",
    "with_named_strategy",
]


class FedAvgConfig(Section):
    """FedAvg (McMahan et al. 2017): the weighted mean; no parameters."""

    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(Section):
    """FedAvgM (Hsu et al. 2019): FedAvg plus server momentum on the pseudo-gradient."""

    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0)  # eta: the server's step size
    momentum: float = Field(0.9, ge=0, lt=1)  # beta


class FedMedianConfig(Section):
    """FedMedian (Yin et al. 2018): the coordinate-wise median; no parameters."""

    name: Literal["fedmedian"] = "fedmedian"


class FedProxConfig(Section):
    """FedProx (Li et al. 2020): FedAvg on the server; mu goes to the clients' proximal term."""

    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0)  # the proximal weight of each client's local objective


class ScaffoldConfig(Section):
    """SCAFFOLD (Karimireddy et al. 2020): control variates correct the clients' drift."""

    name: Literal["scaffold"] = "scaffold"
    server_lr: float = Field(1.0, gt=0)  # eta_g: the server's global step size
    num_clients: int | None = Field(None, ge=1)  # N in c's update; None: num_partitions
    # option II assumes plain local SGD; NIID-Bench runs it with momentum all the same
    allow_momentum: bool = False


class _FedOptParams(Section):
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


class FedTrimmedAvgConfig(Section):
    """FedTrimmedAvg (Yin et al. 2018): the coordinate-wise trimmed mean."""

    name: Literal["fedtrimmedavg"] = "fedtrimmedavg"
    beta: float = Field(0.2, ge=0, lt=0.5)  # share of the updates cut from EACH end


class KrumConfig(Section):
    """Krum (Blanchard et al. 2017): keep the updates closest to their neighbours."""

    name: Literal["krum"] = "krum"
    num_malicious_clients: int = Field(0, ge=0)  # f: rounds need more than 2f + 2 updates
    num_clients_to_keep: int = Field(1, ge=1)  # m: 1 = Krum, more = multi-Krum's mean of m


class DPFedAvgConfig(Section):
    """DP-FedAvg (McMahan et al. 2018; Andrew et al. 2021): clipped deltas, Gaussian noise."""

    name: Literal["dpfedavg"] = "dpfedavg"
    clip_norm: float = 1.0  # C: each client's delta is clipped to this L2 norm (adaptive: C_0)
    noise_multiplier: float = Field(1.0, ge=0, allow_inf_nan=False)  # z: std z*C on the sum
    clipping: Literal["server", "client"] = "server"  # who clips: trusted server or each client
    target_quantile: float | None = Field(None, gt=0, lt=1)  # gamma; None: C stays fixed
    clip_lr: float = Field(0.2, gt=0, allow_inf_nan=False)  # eta_C of the geometric update
    clipped_count_stddev: float | None = Field(None, gt=0, allow_inf_nan=False)  # sigma_b; m/20
    server_lr: float = Field(1.0, gt=0, allow_inf_nan=False)  # eta: x += eta * noised mean
    noise_seed: int | None = None  # None: fresh OS entropy each round (a known seed voids DP)
    num_clients: int | None = Field(None, ge=1)  # N; None: num_partitions
    clients_per_round: int | None = Field(None, ge=1)  # m; None: as selection draws it of N
    target_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)  # stop before it
    delta: float = Field(1e-5, gt=0, lt=1)  # the delta epsilon is reported at
    accountant: Literal["rdp", "pld"] = "rdp"

    @field_validator("clip_norm")
    @classmethod
    def _finite_clip_norm(cls, value: float) -> float:
        if not (value > 0 and value != float("inf")):
            raise ValueError(
                f"clip_norm C must be a finite number above 0, got {value}: the noise z*C is "
                "calibrated to it, and noise on unclipped deltas bounds nothing"
            )
        return value


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
    | KrumConfig
    | DPFedAvgConfig,
    Field(discriminator="name"),
    BeforeValidator(_named),
]


def with_named_strategy(source: Mapping[str, Any]) -> dict[str, Any]:
    """Spell `strategy: NAME` as `strategy: {name: NAME}`, so a later source can add keys."""
    out = dict(source)
    if "strategy" in out:
        out["strategy"] = _named(out["strategy"])
    return out
