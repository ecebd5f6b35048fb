"""The experiment config's `async:` section: buffered asynchronous rounds (FedBuff, FedAsync)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from shared.config.sections import Section
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

__all__ = ["AsyncConfig", "check_async"]


class AsyncConfig(Section):
    """How an asynchronous run buffers, weighs and mixes the clients' updates."""

    # fedbuff: x += server_lr * weighted mean of s(staleness) * (trained - its base version)
    # fedasync: x = (1 - a) x + a * trained, a = alpha * s(staleness), one update per version
    algorithm: Literal["fedbuff", "fedasync"] = "fedbuff"
    buffer_size: int | None = Field(None, ge=1)  # K; None: 3 (fedbuff), 1 (fedasync)
    concurrency: int | None = Field(None, ge=1)  # C, clients training at once; None: all
    staleness: Literal["constant", "polynomial"] = "polynomial"
    staleness_exponent: float = Field(0.5, ge=0)  # a in s(t) = 1 / (1 + t)^a
    max_staleness: int = Field(10, ge=0)  # older updates are refused (409) and counted
    server_lr: float | None = Field(None, gt=0)  # fedbuff's eta_g; None: 1
    alpha: float | None = Field(None, gt=0, le=1)  # fedasync's mixing weight; None: 0.6

    @model_validator(mode="after")
    def _check(self) -> AsyncConfig:
        if self.algorithm == "fedasync" and self.buffer_size not in (None, 1):
            raise ValueError(
                f"async.buffer_size ({self.buffer_size}) must be 1 with fedasync: it mixes "
                "each update into the model as it arrives; use algorithm fedbuff to buffer"
            )
        if self.algorithm == "fedasync" and self.server_lr is not None:
            raise ValueError("async.server_lr is fedbuff's step size: fedasync mixes with alpha")
        if self.algorithm == "fedbuff" and self.alpha is not None:
            raise ValueError("async.alpha is fedasync's mixing weight: fedbuff uses server_lr")
        return self

    @property
    def eta(self) -> float:
        """Fedbuff's server step size eta_g."""
        return 1.0 if self.server_lr is None else self.server_lr

    @property
    def mixing(self) -> float:
        """Fedasync's alpha."""
        return 0.6 if self.alpha is None else self.alpha

    @property
    def buffer(self) -> int:
        """K: how many updates make the next version."""
        if self.buffer_size is not None:
            return self.buffer_size
        return 1 if self.algorithm == "fedasync" else 3

    def announced(self) -> dict[str, Any]:
        """What the round config tells workers (nothing they must act on)."""
        return {"algorithm": self.algorithm, "buffer_size": self.buffer}


# Strategies whose rule needs a synchronous round, and why.
_SYNCHRONOUS_ONLY: dict[type[Any], str] = {
    ScaffoldConfig: (
        "SCAFFOLD's server control variate c moves by the mean of one round's control "
        "deltas times |S|/N, a rule for a synchronous cohort; stale control deltas have no "
        "rule in the paper"
    ),
    DPFedAvgConfig: (
        "DP-FedAvg's accountant assumes each round draws its clients at random from the "
        "population; in async mode who contributes depends on timing, so no sampling "
        "amplification can be claimed"
    ),
}


def check_async(
    section: AsyncConfig,
    *,
    strategy: StrategyConfig,
    secagg: bool,
    fraction_fit: float,
    close_at_threshold: bool,
    download_compression: bool,
) -> None:
    """Refuse, with its reason, a setting that has no meaning in async mode."""
    for kind, why in _SYNCHRONOUS_ONLY.items():
        if isinstance(strategy, kind):
            raise ValueError(f"strategy {strategy.name!r} cannot run with mode: async: {why}")
    if secagg:
        raise ValueError(
            "secure aggregation cannot run with mode: async: masks cancel only in the sum of "
            "a cohort that exchanged keys in one synchronous round"
        )
    if download_compression:
        raise ValueError(
            "download_compression cannot be used with mode: async yet: its chain of steps "
            "assumes every client moves from one round's model to the next"
        )
    if fraction_fit != 1.0:
        raise ValueError(
            f"fraction_fit ({fraction_fit}) is a synchronous round's sample: in mode: async "
            "set async.concurrency (how many clients train at once)"
        )
    if close_at_threshold:
        raise ValueError(
            "close_at_threshold is a synchronous round's rule: in mode: async a version is "
            "made from async.buffer_size updates"
        )
    mixes_directly = (FedAvgConfig, FedProxConfig, FedMedianConfig, FedTrimmedAvgConfig, KrumConfig)
    if section.algorithm == "fedasync" and not isinstance(strategy, (FedAvgConfig, FedProxConfig)):
        raise ValueError(
            f"async.algorithm fedasync mixes one update into the model (alpha): strategy "
            f"{strategy.name!r} has no rule for a single update; use fedavg or fedprox"
        )
    if section.eta != 1.0 and not isinstance(strategy, mixes_directly):
        raise ValueError(
            f"async.server_lr ({section.eta}) and strategy {strategy.name!r}'s own "
            "server learning rate would both scale the buffered step: leave async.server_lr "
            "at 1 and set the strategy's"
        )
    if isinstance(strategy, KrumConfig):
        f, k = strategy.num_malicious_clients, section.buffer
        if k <= 2 * f + 2:
            raise ValueError(
                f"strategy.krum.num_malicious_clients ({f}) needs buffers of more than "
                f"{2 * f + 2} updates (2f + 2); async.buffer_size is {k}"
            )
