"""Server-side evaluation of each new global model on the dataset's test split."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from shared.config import ExperimentConfig
from shared.data import dataset_from_config
from shared.evaluation import EvalResult, evaluate
from shared.models import build_model, load_numpy_state

__all__ = ["ServerEvaluator"]


class ServerEvaluator:
    """Holds the test split and one model; evaluates weights on demand."""

    def __init__(self, config: ExperimentConfig) -> None:
        dataset = dataset_from_config(config)
        self.images = dataset.test.images
        self.labels = dataset.test.labels
        self.model = build_model(config.model, **config.model_args())
        self._lock = threading.Lock()

    def __call__(self, weights: Mapping[str, np.ndarray]) -> EvalResult:
        """Return loss and accuracy of `weights` on the test split."""
        with self._lock:
            load_numpy_state(self.model, weights)
            return evaluate(self.model, self.images, self.labels)
