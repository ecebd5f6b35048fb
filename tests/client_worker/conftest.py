"""Fixtures of the worker tests: a tiny synthetic experiment and its global model."""

from __future__ import annotations

import numpy as np
import pytest

from shared.config import ExperimentConfig, load_config
from shared.data import Dataset, dataset_from_config
from shared.models import init_global_weights

TRAIN_SIZE, NUM_PARTITIONS = 60, 3  # iid: 20 examples per partition


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    return load_config(
        overrides={
            "dataset": "synthetic",
            "synthetic": {
                "channels": 1,
                "image_size": 4,
                "num_classes": 3,
                "train_size": TRAIN_SIZE,
                "test_size": 10,
            },
            "num_partitions": NUM_PARTITIONS,
            "model": "mlp",
        }
    )


@pytest.fixture(scope="module")
def dataset(config: ExperimentConfig) -> Dataset:
    return dataset_from_config(config)


@pytest.fixture(scope="module")
def global_weights() -> dict[str, np.ndarray]:
    return init_global_weights("mlp", seed=0, in_channels=1, num_classes=3, image_size=4)
