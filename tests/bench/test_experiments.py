"""Tests of the experiment scripts' helpers: strategy specs, config checks, accuracy figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _experiments import (
    REPO,
    Spec,
    accuracies,
    check_configs,
    override_flags,
    parse_spec,
    rounds_to_reach,
    run_federation,
    strategy_overrides,
)

from shared.config import parse_overrides
from shared.errors import ConfigError

DEMO = REPO / "configs" / "demo.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fedavg", Spec("fedavg", "fedavg", {})),
        ("fedavgm:momentum=0.5", Spec("fedavgm:momentum=0.5", "fedavgm", {"momentum": 0.5})),
        (
            "krum:num_malicious_clients=2, num_clients_to_keep=8",
            Spec(
                "krum:num_malicious_clients=2, num_clients_to_keep=8",
                "krum",
                {"num_malicious_clients": 2, "num_clients_to_keep": 8},
            ),
        ),
        (
            "multi-krum=krum:num_clients_to_keep=8",
            Spec("multi-krum", "krum", {"num_clients_to_keep": 8}),
        ),
        ("gaussian:std=0.01", Spec("gaussian:std=0.01", "gaussian", {"std": 0.01})),
        ("x:flag=true,name=abc", Spec("x:flag=true,name=abc", "x", {"flag": True, "name": "abc"})),
    ],
)
def test_specs_name_a_label_a_name_and_typed_parameters(text: str, expected: Spec) -> None:
    assert parse_spec(text) == expected


@pytest.mark.parametrize(("text", "message"), [("", "names nothing"), ("krum:f", "'f'")])
def test_malformed_specs_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(text)


def test_keys_go_to_the_strategy_unless_it_lacks_them_and_the_config_has_them() -> None:
    assert strategy_overrides(parse_spec("fedavgm:momentum=0.5,lr=0.1")) == {
        "strategy": {"name": "fedavgm", "momentum": 0.5},
        "lr": 0.1,
    }
    # FedAvg has no mu: the config's top-level mu, FedProx's client under FedAvg
    assert strategy_overrides(parse_spec("fedavg:mu=0.01")) == {
        "strategy": {"name": "fedavg"},
        "mu": 0.01,
    }
    # a strategy the config does not know keeps every key, for the config to refuse it
    assert strategy_overrides(parse_spec("nosuch:mu=0.01")) == {
        "strategy": {"name": "nosuch", "mu": 0.01}
    }
    assert strategy_overrides(parse_spec("fedavg:beta=1")) == {
        "strategy": {"name": "fedavg", "beta": 1}
    }


def test_refused_configs_are_reported_once_each_with_their_runs() -> None:
    settings: dict[tuple[str, str], dict[str, Any]] = {
        ("fedavg", "honest"): strategy_overrides(parse_spec("fedavg:mu=0.01")),
        ("nosuch", "honest"): strategy_overrides(parse_spec("nosuch")),
        ("nosuch", "attacked"): strategy_overrides(parse_spec("nosuch")),
        ("fedavg", "typo"): strategy_overrides(parse_spec("fedavg:bogus=1")),
    }
    errors = check_configs(DEMO, settings)
    assert len(errors) == 2
    assert "'nosuch'" in errors[0]
    assert "(runs: nosuch / honest, nosuch / attacked)" in errors[0]
    assert "unknown key 'strategy.fedavg.bogus'" in errors[1]
    assert check_configs(DEMO, {("fedavg", "honest"): settings["fedavg", "honest"]}) == []


def test_accuracy_figures_come_from_the_evaluated_rounds() -> None:
    rows: list[dict[str, Any]] = [
        {"round": 1, "eval_accuracy": 0.5},
        {"round": 2, "eval_accuracy": None},
        {"round": 3, "eval_accuracy": 0.8},
        {"round": 4, "eval_accuracy": 0.95},
        {"round": 5, "eval_accuracy": 1.0},
        {"round": 6, "eval_accuracy": 0.9},
    ]
    assert accuracies(rows) == [0.5, 0.8, 0.95, 1.0, 0.9]
    # 90% of the best (1.0) is 0.9: first reached in round 4
    assert rounds_to_reach(rows, 0.9) == 4
    assert rounds_to_reach(rows, 0.5) == 1
    assert rounds_to_reach(rows[1:2], 0.9) is None


def test_a_run_the_runner_refuses_comes_back_with_its_error(tmp_path: Path) -> None:
    run = run_federation(
        DEMO,
        {"strategy": {"name": "nosuch"}},
        runs_dir=tmp_path,
        worker_processes=1,
        timeout_s=120,
    )
    assert run.rows == []
    assert run.error is not None
    assert "exited with code 2" in run.error
    assert "'nosuch'" in run.error
    assert not run.diverged


def test_overrides_reach_the_runner_as_they_were_meant() -> None:
    overrides = {
        "num_rounds": 20,
        "mu": 1e-05,
        "strategy": {"name": "fedadam", "tau": 1e-09, "label": "a b"},
        "byzantine": [{"clients": "0-1", "attack": "gaussian", "std": 1.0}],
        "local_layers": [],
        "fedbn": True,
    }
    flags = override_flags(overrides)
    assert flags[::2] == ["--set"] * len(overrides)
    assert flags[1] == "num_rounds=20"
    assert parse_overrides(flags[1::2]) == overrides
