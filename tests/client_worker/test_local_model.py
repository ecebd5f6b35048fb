"""Tests of the client's model: modules lent from a pool, built once, loaded every round."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
from torch import nn

from client_worker.local_model import LocalModel, ModelPool
from client_worker.replies import WeightsReply
from client_worker.train import TrainingInterrupted
from shared.data import Dataset, Split
from shared.errors import ModelError
from shared.models import init_global_weights, state_to_numpy


def _dataset() -> Dataset:
    split = Split(np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int64))
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


def _load(local: LocalModel, reply: WeightsReply) -> nn.Module:
    with local.loaded(reply) as module:
        return module


def test_the_module_is_built_once_per_name_and_holds_each_rounds_weights() -> None:
    pool = ModelPool(_dataset())
    local = LocalModel("0", pool, "mlp")
    first = _load(local, _reply("mlp", _weights("mlp", 1)))
    second_weights = _weights("mlp", 2)
    second = _load(local, _reply("mlp", second_weights))
    assert second is first  # reused, not rebuilt
    for name, array in state_to_numpy(second).items():
        np.testing.assert_array_equal(array, second_weights[name])
    other = _load(local, _reply("mlp-128", _weights("mlp-128", 3)))
    assert other is not first
    assert local.name == "mlp-128"
    assert pool.built == 2  # the pool of one replaced the idle "mlp" module


def test_a_reply_without_a_model_name_uses_the_round_config_then_the_default() -> None:
    local = LocalModel("0", ModelPool(_dataset()), "mlp")
    _load(local, _reply("", _weights("mlp-128", 1), {"model": "mlp-128"}))
    assert local.name == "mlp-128"
    _load(local, _reply("", _weights("mlp", 1)))
    assert local.name == "mlp"


def test_a_mismatch_is_logged_once_per_key(caplog: pytest.LogCaptureFixture) -> None:
    expected = {"dataset": "mnist5k", "num_partitions": 10}
    local = LocalModel("7", ModelPool(_dataset()), "mlp", expected)
    reply = _reply("mlp", _weights("mlp", 1), {"dataset": "cifar10", "num_partitions": 10})
    with caplog.at_level(logging.WARNING, logger="client_worker.local_model"):
        for _ in range(3):
            _load(local, reply)
    assert len(caplog.records) == 1
    assert "the server's dataset is 'cifar10' but this worker uses 'mnist5k'" in caplog.text


def test_clients_sharing_a_pool_each_get_the_global_weights_in_a_module_of_their_own() -> None:
    pool = ModelPool(_dataset(), size=2)
    a, b = LocalModel("a", pool, "mlp"), LocalModel("b", pool, "mlp")
    weights = _weights("mlp", 4)
    with a.loaded(_reply("mlp", weights)) as module_a, b.loaded(_reply("mlp", weights)) as module_b:
        assert module_a is not module_b
        for module in (module_a, module_b):
            for name, array in state_to_numpy(module).items():
                np.testing.assert_array_equal(array, weights[name])
        for parameter in module_a.parameters():
            parameter.data.add_(1.0)  # client a trains; b's module is untouched
        np.testing.assert_array_equal(state_to_numpy(module_b)["1.weight"], weights["1.weight"])
    assert pool.built == 2


def test_a_full_pool_makes_the_next_client_wait_for_a_module() -> None:
    pool = ModelPool(_dataset(), size=1)
    second: list[nn.Module] = []

    def borrow() -> None:
        with pool.lease("mlp") as module:
            second.append(module)

    with pool.lease("mlp") as first:
        waiter = threading.Thread(target=borrow)
        waiter.start()
        time.sleep(0.2)
        assert second == []  # still waiting: the only module is lent out
    waiter.join(5.0)
    assert second == [first]
    assert pool.built == 1


def test_a_stop_reaches_a_client_waiting_for_a_module() -> None:
    pool = ModelPool(_dataset(), size=1)
    stop = threading.Event()
    outcome: list[TrainingInterrupted] = []

    def borrow() -> None:
        try:
            with pool.lease("mlp", stop):
                pass
        except TrainingInterrupted as exc:
            outcome.append(exc)

    with pool.lease("mlp"):
        waiter = threading.Thread(target=borrow)
        waiter.start()
        time.sleep(0.05)
        stop.set()
        waiter.join(5.0)
    assert len(outcome) == 1
    assert outcome[0].batches_done == 0


def test_a_failed_build_leaves_room_for_the_next_one() -> None:
    pool = ModelPool(_dataset(), size=1)
    with pytest.raises(ModelError, match="unknown model"), pool.lease("no-such-model"):
        pass
    with pool.lease("mlp") as module:
        assert isinstance(module, nn.Module)


def test_a_pool_needs_room_for_a_module() -> None:
    with pytest.raises(ValueError, match="at least 1 module"):
        ModelPool(_dataset(), size=0)
