"""DP-FedAvg's cross-checks: the counts it derives, and the configs that would mean nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.config.strategies import DPFedAvgConfig
from shared.errors import ConfigError
from shared.fit_clients import num_fit_clients
from shared.privacy.noise import update_noise_multiplier

__all__ = ["check_dp_fedavg", "clipped_count_stddev", "with_dp_counts"]


def with_dp_counts(strategy: DPFedAvgConfig, data: Mapping[str, Any]) -> DPFedAvgConfig:
    """Fill N (num_partitions) and m (as selection draws it of N) when the config left them."""
    num_clients = strategy.num_clients or data.get("num_partitions")
    fraction_fit, min_fit = data.get("fraction_fit"), data.get("min_fit_clients")
    if num_clients is None or fraction_fit is None or min_fit is None:
        return strategy  # one of them is itself invalid and named by its own error
    drawn = num_fit_clients(num_clients, fraction_fit=fraction_fit, min_fit_clients=min_fit)
    if strategy.clients_per_round not in (None, drawn):
        raise ValueError(
            f"strategy.clients_per_round ({strategy.clients_per_round}) is not what selection "
            f"draws of N={num_clients} clients with fraction_fit {fraction_fit} and "
            f"min_fit_clients {min_fit} ({drawn}); leave it unset"
        )
    return strategy.model_copy(update={"num_clients": num_clients, "clients_per_round": drawn})


def clipped_count_stddev(strategy: DPFedAvgConfig) -> float:
    """Return sigma_b: the configured one, else m/20 as in Andrew et al. 2021."""
    if strategy.clipped_count_stddev is not None:
        return strategy.clipped_count_stddev
    return (strategy.clients_per_round or 1) / 20


def check_dp_fedavg(strategy: DPFedAvgConfig, *, mu: float) -> None:
    """Raise ValueError naming why a DP-FedAvg config cannot give what it asks for."""
    z = strategy.noise_multiplier
    if z == 0 and strategy.target_epsilon is not None:
        raise ValueError(
            f"strategy.target_epsilon ({strategy.target_epsilon}) with noise_multiplier 0: "
            "without noise epsilon is infinite from the first round; set noise_multiplier > 0"
        )
    if strategy.clipping == "client" and mu > 0:
        raise ValueError(
            f"mu ({mu}) with clipping: client: the clipping client does not run FedProx's "
            "proximal term; remove mu, or use clipping: server"
        )
    if strategy.target_quantile is not None:
        try:
            update_noise_multiplier(z, clipped_count_stddev(strategy))
        except ConfigError as exc:
            default = "" if strategy.clipped_count_stddev is not None else " (default m/20)"
            raise ValueError(f"strategy.clipped_count_stddev{default}: {exc}") from None
    n, m = strategy.num_clients, strategy.clients_per_round
    if n is None or m is None:
        return
    if strategy.accountant == "pld" and m < n:
        raise ValueError(
            f"strategy.accountant pld cannot model this run's sampling, m={m} of N={n} clients "
            "without replacement (dp_accounting's PLD accountant has no such event); use "
            "accountant: rdp, or fraction_fit: 1"
        )
    if strategy.target_epsilon is not None:
        _check_first_round(strategy, n, m)


def _check_first_round(strategy: DPFedAvgConfig, n: int, m: int) -> None:
    """Refuse a budget that the first round alone would exceed."""
    # here, not at the top: only a budgeted DP config pays for loading dp_accounting
    from shared.privacy.accounting import RoundSampling, epsilon_after

    first = epsilon_after(
        [RoundSampling(n, m)],
        noise_multiplier=strategy.noise_multiplier,
        delta=strategy.delta,
        accountant=strategy.accountant,
    )
    assert strategy.target_epsilon is not None
    if first > strategy.target_epsilon:
        raise ValueError(
            f"strategy.target_epsilon ({strategy.target_epsilon}) is below the epsilon of the "
            f"first round alone ({first:.4g} at delta {strategy.delta}, m={m} of N={n}, "
            f"noise_multiplier {strategy.noise_multiplier}): not one round could run"
        )
