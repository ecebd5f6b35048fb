"""Tests of client_worker/algorithms/personal.py: a client keeps its own tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from client_worker.algorithms import AlgorithmSession, FedProx, RoundContext
from client_worker.algorithms.local_round import train_round
from client_worker.algorithms.personal import Personalized
from client_worker.train import TrainConfig, seeded_global_rng
from shared.models import state_to_numpy
from tests.client_worker.test_train import _blobs

ROUND_CONFIG = {"strategy": "fedavg", "local_layers": ["2.*"]}  # the head: Linear "2"


def _two_layers(seed: int) -> nn.Module:
    with seeded_global_rng(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))


def _round(session: AlgorithmSession, model: nn.Module, server_round: int) -> dict[str, np.ndarray]:
    """Train one round from the global weights in `model`; return what would be sent."""
    algorithm = session.for_round(ROUND_CONFIG)
    context = RoundContext(server_round, ROUND_CONFIG, state_to_numpy(model))
    images, labels = _blobs()
    config = TrainConfig(local_epochs=1, batch_size=16, lr=0.1)
    return train_round(model, algorithm, context, images, labels, config, seed=server_round).weights


def test_the_head_stays_on_the_client_across_rounds_and_restarts(tmp_path: Path) -> None:
    session = AlgorithmSession("3", tmp_path)
    model = _two_layers(0)
    sent = _round(session, model, 1)
    assert sorted(sent) == ["1.bias", "1.weight"]  # the head is not sent
    algorithm = session.for_round(ROUND_CONFIG)
    assert isinstance(algorithm, Personalized)
    trained_head = {k: v.copy() for k, v in algorithm.local.items()}
    assert sorted(trained_head) == ["2.bias", "2.weight"]
    session.commit()

    # Round 2 starts from a global model whose head is someone else's: the client's own
    # head replaces it before training, also after a restart of the worker.
    restarted = AlgorithmSession("3", tmp_path)
    other = _two_layers(9)
    seen: dict[str, torch.Tensor] = {}
    original = Personalized.before_training

    def spy(self: Personalized, model: nn.Module, context: RoundContext) -> None:
        original(self, model, context)
        seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    Personalized.before_training = spy  # type: ignore[method-assign]
    try:
        _round(restarted, other, 2)
    finally:
        Personalized.before_training = original  # type: ignore[method-assign]
    for name, value in trained_head.items():
        np.testing.assert_array_equal(seen[name].numpy(), value)
    assert not torch.equal(seen["1.weight"], _two_layers(0).state_dict()["1.weight"])


def test_it_wraps_the_round_algorithm_and_keeps_its_state(tmp_path: Path) -> None:
    session = AlgorithmSession("5", tmp_path)
    algorithm = session.for_round({**ROUND_CONFIG, "mu": 0.1})
    assert isinstance(algorithm, Personalized)
    assert isinstance(algorithm.inner, FedProx)
    assert session.for_round({"strategy": "fedavg"}) is not algorithm  # no longer local


def test_a_frozen_backbone_does_not_train_and_is_not_sent() -> None:
    model = _two_layers(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    round_config = {"strategy": "fedavg", "trainable": ["2.*"]}
    session = AlgorithmSession("1", None)
    context = RoundContext(1, round_config, state_to_numpy(model))
    images, labels = _blobs()
    config = TrainConfig.from_round_config(
        {"local_epochs": 1, "batch_size": 16, "lr": 0.1, "trainable": ["2.*"]}
    )
    update = train_round(
        model, session.for_round(round_config), context, images, labels, config, seed=1
    )
    assert sorted(update.weights) == ["2.bias", "2.weight"]
    assert torch.equal(model.state_dict()["1.weight"], before["1.weight"])  # frozen
    assert not torch.equal(model.state_dict()["2.weight"], before["2.weight"])  # trained


def test_a_frozen_batchnorm_keeps_its_statistics() -> None:
    with seeded_global_rng(0):
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(local_epochs=1, batch_size=16, lr=0.1, trainable=("3.*",))
    context = RoundContext(1, {"trainable": ["3.*"]}, state_to_numpy(model))
    images, labels = _blobs()
    plain = AlgorithmSession("2", None).for_round({})
    update = train_round(model, plain, context, images, labels, config, seed=1)
    assert sorted(update.weights) == ["3.bias", "3.weight"]
    for name in ("2.running_mean", "2.running_var", "2.weight", "1.weight"):
        assert torch.equal(model.state_dict()[name], before[name]), name
