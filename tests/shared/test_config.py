"""Tests of shared/config/: the client-side settings the strategies fedprox and scaffold imply."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import (
    DPFedAvgConfig,
    ExperimentConfig,
    FedProxConfig,
    ScaffoldConfig,
    load_config,
)
from shared.errors import ConfigError


def test_strategy_fedprox_sends_its_mu_to_the_clients() -> None:
    config = load_config(None, {"strategy": {"name": "fedprox", "mu": 0.1}})
    assert config.strategy == FedProxConfig(mu=0.1)
    assert config.round_config()["mu"] == 0.1
    assert config.round_config()["strategy"] == "fedprox"
    assert load_config(None, {"strategy": "fedprox"}).round_config()["mu"] == 0.01  # default
    same = load_config(None, {"mu": 0.1, "strategy": {"name": "fedprox", "mu": 0.1}})
    assert same.round_config()["mu"] == 0.1


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedmedian"])
def test_the_top_level_mu_still_reaches_the_clients(strategy: str) -> None:
    config = load_config(None, {"mu": 0.05, "strategy": strategy})
    assert config.round_config()["mu"] == 0.05
    assert config.round_config()["strategy"] == strategy


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"mu": 0.1, "strategy": {"name": "fedprox", "mu": 0.5}},
            r"mu is set twice: 0.1 at the top level, 0.5 as strategy.mu; .*strategy.mu only",
        ),
        (
            {"mu": 0.1, "strategy": "fedprox"},
            r"0.01 as strategy.mu \(its default\)",
        ),
        ({"mu": 0.1, "strategy": "scaffold"}, r"mu \(0.1\) .* SCAFFOLD's clients do not use"),
        (
            {"momentum": 0.9, "strategy": "scaffold"},
            r"momentum \(0.9\) must be 0 with SCAFFOLD.*strategy.allow_momentum",
        ),
        ({"strategy": {"name": "scaffold", "num_clients": 0}}, "strategy.scaffold.num_clients"),
        (
            {"num_partitions": 1, "strategy": "scaffold"},
            r"strategy.num_clients \(1\), .* is below min_fit_clients \(2\)",
        ),
        ({"strategy": {"name": "fedprox", "mu": -1}}, "strategy.fedprox.mu"),
    ],
)
def test_conflicting_settings_are_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_scaffold_counts_one_client_per_partition_unless_told() -> None:
    config = load_config(None, {"num_partitions": 4, "strategy": "scaffold"})
    assert config.strategy == ScaffoldConfig(num_clients=4)
    told = load_config(
        None, {"num_partitions": 4, "strategy": {"name": "scaffold", "num_clients": 9}}
    )
    assert told.strategy == ScaffoldConfig(num_clients=9)
    assert told.round_config()["strategy"] == "scaffold"
    assert told.round_config()["mu"] == 0.0


def test_scaffold_runs_with_momentum_only_when_allowed() -> None:
    config = load_config(
        None, {"momentum": 0.9, "strategy": {"name": "scaffold", "allow_momentum": True}}
    )
    assert config.round_config()["momentum"] == 0.9


# ---------------------------------------------------------------------- DP-FedAvg


def _dp(strategy: dict[str, Any], **top: Any) -> ExperimentConfig:
    return load_config(None, {"strategy": {"name": "dpfedavg", **strategy}, **top})


def test_dpfedavg_derives_n_and_m_as_selection_does() -> None:
    config = _dp({}, num_partitions=100, fraction_fit=0.1, min_fit_clients=2)
    assert isinstance(config.strategy, DPFedAvgConfig)
    assert (config.strategy.num_clients, config.strategy.clients_per_round) == (100, 10)


@pytest.mark.parametrize(
    ("strategy", "top", "message"),
    [
        ({"clip_norm": 0}, {}, "clip_norm C must be a finite number above 0"),
        ({"clip_norm": "inf"}, {}, "clip_norm C must be a finite number above 0"),
        ({"noise_multiplier": 0, "target_epsilon": 3}, {}, "without noise epsilon is infinite"),
        ({"target_quantile": 0.5}, {}, r"default m/20.*2 \* clipped_count_stddev \(1\)"),
        ({"accountant": "pld"}, {"num_partitions": 10, "fraction_fit": 0.3}, "pld cannot model"),
        ({"target_epsilon": 0.5}, {}, "below the epsilon of the first round alone"),
        ({"clients_per_round": 3}, {}, "not what selection draws"),
        ({"clipping": "client"}, {"mu": 0.1}, "does not run FedProx"),
    ],
)
def test_dpfedavg_refuses_meaningless_configs(
    strategy: dict[str, Any], top: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _dp(strategy, **top)


def test_dpfedavg_with_pld_and_everyone_each_round_is_taken() -> None:
    config = _dp({"accountant": "pld", "target_epsilon": 200}, fraction_fit=1.0)
    assert isinstance(config.strategy, DPFedAvgConfig)
