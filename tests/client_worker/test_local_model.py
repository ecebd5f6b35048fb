"""Tests of the client's local model: built once per name, loaded every round, warned once."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from client_worker.local_model import LocalModel
from client_worker.replies import WeightsReply
from shared.data import Dataset, Split
from shared.models import init_global_weights, state_to_numpy


def _dataset() -> Dataset:
    split = Split(images=np.zeros((2, 1, 28, 28), np.float32), labels=np.zeros(2, np.int64))
    return Dataset("tiny", split, split, 10, 1, 28, tuple(str(i) for i in range(10)))


def _reply(
    model: str, weights: dict[str, np.ndarray], config: dict[str, Any] | None = None
) -> WeightsReply:
    raw = {
        name: {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}
        for name, a in weights.items()
    }
    return WeightsReply(1, "training", model, ("0",), config or {}, raw, '"e"', True, 0)


def _weights(name: str, seed: int) -> dict[str, np.ndarray]:
    return init_global_weights(name, seed=seed, in_channels=1, num_classes=10, image_size=28)


def test_the_module_is_built_once_per_name_and_holds_each_rounds_weights() -> None:
    local = LocalModel("0", _dataset(), "mlp")
    first = local.load(_reply("mlp", _weights("mlp", 1)))
    second_weights = _weights("mlp", 2)
    second = local.load(_reply("mlp", second_weights))
    assert second is first  # reused, not rebuilt
    for name, array in state_to_numpy(second).items():
        np.testing.assert_array_equal(array, second_weights[name])
    other = local.load(_reply("mlp-128", _weights("mlp-128", 3)))
    assert other is not first
    assert local.name == "mlp-128"


def test_a_reply_without_a_model_name_uses_the_round_config_then_the_default() -> None:
    local = LocalModel("0", _dataset(), "mlp")
    local.load(_reply("", _weights("mlp-128", 1), {"model": "mlp-128"}))
    assert local.name == "mlp-128"
    local.load(_reply("", _weights("mlp", 1)))
    assert local.name == "mlp"


def test_a_mismatch_is_logged_once_per_key(caplog: pytest.LogCaptureFixture) -> None:
    expected = {"dataset": "mnist5k", "num_partitions": 10}
    local = LocalModel("7", _dataset(), "mlp", expected)
    reply = _reply("mlp", _weights("mlp", 1), {"dataset": "cifar10", "num_partitions": 10})
    with caplog.at_level(logging.WARNING, logger="client_worker.local_model"):
        for _ in range(3):
            local.load(reply)
    assert len(caplog.records) == 1
    assert "the server's dataset is 'cifar10' but this worker uses 'mnist5k'" in caplog.text
