"""Tests of shared/config/dp_sgd.py: the dp_sgd section, its refusals, the round config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.config import DpSgdConfig, load_config
from shared.errors import ConfigError

CONFIGS = Path(__file__).parents[3] / "configs"


def test_without_a_dp_sgd_section_the_clients_train_plainly() -> None:
    config = load_config(None, {})
    assert config.dp_sgd is None
    assert "dp_sgd" not in config.round_config()


def test_the_section_reaches_the_clients_in_the_round_config() -> None:
    section = {"noise_multiplier": 1.1, "max_grad_norm": 0.5, "target_epsilon": 3}
    config = load_config(None, {"dp_sgd": section})
    assert config.dp_sgd == DpSgdConfig(noise_multiplier=1.1, max_grad_norm=0.5, target_epsilon=3)
    assert config.round_config()["dp_sgd"] == {
        "noise_multiplier": 1.1,
        "max_grad_norm": 0.5,
        "delta": 1e-5,  # the default
        "target_epsilon": 3.0,
    }


def test_the_dp_sgd_config_file() -> None:
    config = load_config(CONFIGS / "dp-sgd.yaml")
    assert config.dp_sgd == DpSgdConfig(
        noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, target_epsilon=8.0
    )
    assert config.model == "mlp"  # no BatchNorm
    assert config.round_config()["dp_sgd"]["target_epsilon"] == 8.0


def test_the_section_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIBUTARY_DP_SGD__NOISE_MULTIPLIER", "0.8")
    monkeypatch.setenv("TRIBUTARY_DP_SGD__MAX_GRAD_NORM", "2")
    section = load_config(None, {}).dp_sgd
    assert section is not None
    assert (section.noise_multiplier, section.max_grad_norm) == (0.8, 2.0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"noise_multiplier": 1.0},
            r"dp_sgd.max_grad_norm is required: without a clip .* unbounded "
            r"\(no privacy guarantee\)",
        ),
        (
            {"noise_multiplier": 0.0, "max_grad_norm": 1.0, "target_epsilon": 8},
            r"target_epsilon \(8.0\) cannot be met with noise_multiplier 0: clipping alone "
            "gives epsilon = infinity",
        ),
        ({"max_grad_norm": 1.0}, r"dp_sgd.noise_multiplier.*Field required"),
        ({"noise_multiplier": -1.0, "max_grad_norm": 1.0}, r"dp_sgd.noise_multiplier"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 0.0}, r"dp_sgd.max_grad_norm"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1.0}, r"dp_sgd.delta"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 0}, r"dp_sgd.delta"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "target_epsilon": 0}, "target_eps"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "epsilon": 3}, r"dp_sgd.epsilon"),
    ],
)
def test_unusable_sections_are_refused_saying_why(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"dp_sgd": section})


def test_clipping_without_noise_is_allowed_but_has_no_budget() -> None:
    config = load_config(None, {"dp_sgd": {"noise_multiplier": 0, "max_grad_norm": 1.0}})
    assert config.round_config()["dp_sgd"]["noise_multiplier"] == 0.0
