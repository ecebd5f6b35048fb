"""Server-side evaluation of each new global model on the dataset's test split.

The model lives on the settings' `eval_device` (the CPU by default); the test split stays
in host memory and goes to the device one batch at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import torch

from shared.config import ExperimentConfig
from shared.data import dataset_from_config
from shared.device import resolve_device
from shared.evaluation import EvalResult, evaluate
from shared.models import build_model, load_numpy_state

__all__ = ["ServerEvaluator"]


class ServerEvaluator:
    """Holds the test split and one model; evaluates weights on demand."""

    def __init__(self, config: ExperimentConfig, device: str = "cpu") -> None:
        self.device = resolve_device(device)  # a CUDA device that is not here: ConfigError
        dataset = dataset_from_config(config)
        self.images = dataset.test.images
        self.labels = dataset.test.labels
        self.model: torch.nn.Module = build_model(config.model, **config.model_args())
        self.model.to(self.device)
        self._lock = threading.Lock()

    def __call__(self, weights: Mapping[str, np.ndarray]) -> EvalResult:
        """Return loss and accuracy of `weights` on the test split."""
        with self._lock:
            load_numpy_state(self.model, weights)
            return evaluate(self.model, self.images, self.labels)
