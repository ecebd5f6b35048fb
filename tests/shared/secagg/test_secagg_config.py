"""The `secagg:` config section: its checks, the threshold rule, and refused strategies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aggregator_service.federation.federation import Federation
from aggregator_service.settings import AggregatorSettings
from shared.config import SecAggConfig, load_config, round_threshold
from shared.errors import ConfigError


def secagg(**section: Any) -> Any:
    base = {"num_partitions": 10, "min_fit_clients": 5, "min_available_clients": 10}
    return load_config(overrides={**base, "secagg": {"enabled": True, **section}})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"num_neighbours": 5}, "must be even"),
        ({"weighting": "num_examples"}, "needs max_num_examples"),
        ({"modulus": 3 << 20}, "power of two"),
        ({"modulus": 1 << 33}, "power of two"),
        ({"modulus": 1 << 16, "quantization_range": 1 << 17}, "exceeds the modulus"),
        ({"threshold": 11}, "exceeds the 5 clients"),
        ({"quantization_range": 1 << 30}, "at most 4 clients"),
    ],
)
def test_unusable_sections_are_refused_with_their_reason(
    section: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        secagg(**section)


@pytest.mark.parametrize(
    ("strategy", "section", "message"),
    [
        ({"name": "dpfedavg"}, {}, "clipping: client"),
        (
            {"name": "dpfedavg", "clipping": "client"},
            {"weighting": "num_examples", "max_num_examples": 400},
            "weighting must be uniform",
        ),
    ],
)
def test_dp_fedavg_under_secagg_needs_client_clipping_and_uniform_weights(
    strategy: dict[str, Any], section: dict[str, Any], message: str
) -> None:
    base = {"num_partitions": 10, "min_fit_clients": 5, "min_available_clients": 10}
    overrides = {**base, "strategy": strategy, "secagg": {"enabled": True, **section}}
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_a_round_of_one_client_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_fit_clients >= 2"):
        load_config(overrides={"min_fit_clients": 1, "secagg": {"enabled": True}})


@pytest.mark.parametrize(
    ("threshold", "neighbours", "participants", "expected"),
    [
        (None, None, 10, 7),  # ceil(2/3 of 10)
        (None, None, 3, 2),
        (2, None, 10, 6),  # never at or below half the holders
        (9, None, 10, 9),
        (None, 4, 10, 4),  # 5 holders: ceil(10/3)
        (None, 12, 10, 7),  # more neighbours than others: everyone
    ],
)
def test_round_threshold_stays_above_half_of_the_holders(
    threshold: int | None, neighbours: int | None, participants: int, expected: int
) -> None:
    options = SecAggConfig(enabled=True, threshold=threshold, num_neighbours=neighbours)
    assert round_threshold(options, participants) == expected


@pytest.mark.parametrize("strategy", ["fedmedian", "krum", "fedtrimmedavg", "fedavgm", "fedadam"])
def test_strategies_that_need_each_update_are_refused_at_start(
    strategy: str, tmp_path: Path
) -> None:
    rounds = {"min_fit_clients": 5, "min_available_clients": 5, "num_partitions": 5}
    overrides = {"strategy": strategy, "secagg": {"enabled": True}, **rounds}
    config = load_config(overrides=overrides)
    with pytest.raises(ConfigError, match=f"'{strategy}' needs each client's update.*fedavg"):
        Federation(AggregatorSettings(state_dir=tmp_path), config)
