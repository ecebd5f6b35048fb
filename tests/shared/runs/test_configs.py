"""Every shipped experiment config loads, and says what its scenario promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ExperimentConfig, load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
EXPECTED = {
    "demo.yaml",
    "mnist-mlp128-threshold.yaml",
    "mnist-2nn-threshold.yaml",
    "cifar10-resnet18-classes.yaml",
    "synthetic-resnet18-classes.yaml",
    "flower-knobs.yaml",
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
