"""Every shipped experiment config loads, and says what its scenario promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import DPFedAvgConfig, ExperimentConfig, load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
EXPECTED = {
    "demo.yaml",
    "mnist-mlp128-threshold.yaml",
    "mnist-2nn-threshold.yaml",
    "cifar10-resnet18-classes.yaml",
    "synthetic-resnet18-classes.yaml",
    "flower-knobs.yaml",
    "dp-fedavg.yaml",
}


def load(name: str) -> ExperimentConfig:
    return load_config(CONFIGS / name)


def test_every_scenario_is_shipped() -> None:
    assert {path.name for path in CONFIGS.glob("*.yaml")} >= EXPECTED


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.min_available_clients <= config.num_partitions
    assert config.min_fit_clients <= config.num_partitions


def test_demo_is_ten_iid_clients_on_mnist5k() -> None:
    config = load("demo.yaml")
    assert (config.num_partitions, config.dataset, config.model) == (10, "mnist5k", "mlp")
    assert config.partition.name == "iid"
    assert config.fraction_fit == 1.0
    assert config.server_eval


@pytest.mark.parametrize(
    ("name", "model"),
    [("mnist-mlp128-threshold.yaml", "mlp-128"), ("mnist-2nn-threshold.yaml", "mlp")],
)
def test_threshold_scenario(name: str, model: str) -> None:
    config = load(name)
    assert config.model == model
    assert config.num_partitions == 10
    assert config.close_at_threshold
    assert config.min_fit_clients == 3
    assert config.fraction_fit == 0.4
    assert (config.local_epochs, config.batch_size) == (5, 32)
    (profile,) = config.network
    assert (profile.clients, profile.latency_ms) == ("all", 20)
    assert (profile.jitter, profile.jitter_ms) == ("exponential", 30)


@pytest.mark.parametrize(
    ("name", "dataset"),
    [
        ("cifar10-resnet18-classes.yaml", "cifar10"),
        ("synthetic-resnet18-classes.yaml", "synthetic"),
    ],
)
def test_classes_scenario(name: str, dataset: str) -> None:
    config = load(name)
    assert config.dataset == dataset
    assert config.model == "resnet18"
    assert config.num_partitions == 3
    assert config.partition.name == "classes"
    assert config.partition.classes == [[0, 1], [2, 3], [4, 5]]
    assert config.model_args() == {"in_channels": 3, "num_classes": 10, "image_size": 32}
    assert config.server_eval


def test_flower_knobs_are_set() -> None:
    text = (CONFIGS / "flower-knobs.yaml").read_text()
    for key in ["num_rounds", "fraction_fit", "min_fit_clients", "min_available_clients"]:
        assert f"\n{key}:" in text
    for key in ["num_partitions", "local_epochs", "batch_size"]:
        assert f"\n{key}:" in text


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "niid-bench").glob("*.yaml")), ids=lambda p: p.name
)
def test_niid_bench_configs_keep_the_papers_setting(path: Path) -> None:
    # Li et al. 2022 (NIID-Bench): 10 clients, all every round, the simple CNN, 50 rounds
    # of 10 local epochs, batch 64, SGD lr 0.01, momentum 0.9, weight decay 1e-5.
    config = load_config(path)
    assert (config.dataset, config.model, config.num_partitions) == (
        "fashion-mnist",
        "simple-cnn",
        10,
    )
    assert (config.fraction_fit, config.min_fit_clients, config.num_rounds) == (1.0, 10, 50)
    assert (config.local_epochs, config.batch_size, config.lr) == (10, 64, 0.01)
    assert (config.momentum, config.weight_decay) == (0.9, 1e-5)
    assert config.name == f"niid-{path.stem}"
    assert config.proximal_mu() == (0.01 if config.strategy.name == "fedprox" else 0.0)


def test_niid_bench_covers_the_issue_runs() -> None:
    names = {path.stem for path in (CONFIGS / "niid-bench").glob("*.yaml")}
    runs = ["fedavg-iid", "fedavg-dir0.5", "fedavg-c2", "fedavg-c3"]
    runs += ["fedprox-dir0.5", "scaffold-dir0.5"]
    assert names == {f"fmnist-{run}" for run in runs}


def test_dp_fedavg_samples_50_of_100_clients_and_stops_at_its_budget() -> None:
    from shared.privacy.accounting import RoundSampling, planned_epsilon

    config = load("dp-fedavg.yaml")
    strategy = config.strategy
    assert isinstance(strategy, DPFedAvgConfig)
    assert (strategy.num_clients, strategy.clients_per_round) == (100, 50)
    assert (strategy.clipping, strategy.accountant, strategy.delta) == ("server", "rdp", 1e-5)
    assert strategy.noise_seed is None  # fresh OS entropy: the demo's noise is private
    assert strategy.target_epsilon is not None
    every_round = planned_epsilon(
        config.num_rounds,
        RoundSampling(100, 50),
        noise_multiplier=strategy.noise_multiplier,
        delta=strategy.delta,
    )
    assert every_round > strategy.target_epsilon  # the demo shows the budget stop
