"""FedProx as a client algorithm: the proximal term, and training identical to the old loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from client_worker.algorithms import ClientAlgorithm, FedProx, RoundContext, algorithm_class
from client_worker.train import TrainConfig, TrainResult, seeded_global_rng, train
from shared.errors import ConfigError
from shared.models import build_model
from tests.client_worker.test_train import _blobs, _distance, _gd_step, _linear, _params


def _train_prox(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    mu: float,
    seed: int = 0,
) -> TrainResult:
    algorithm = FedProx()
    algorithm.before_training(model, RoundContext(1, {"mu": mu}, {}))
    return train(model, images, labels, config, seed=seed, hooks=algorithm)


def test_fedprox_pulls_weights_toward_global() -> None:
    images, labels = _blobs()
    start = _linear()
    w_global = _params(start)
    plain, prox = copy.deepcopy(start), copy.deepcopy(start)
    train(plain, images, labels, TrainConfig(5, 8, lr=0.1), seed=0)
    _train_prox(prox, images, labels, TrainConfig(5, 8, lr=0.1), mu=5.0)
    assert _distance(_params(prox), w_global) < 0.5 * _distance(_params(plain), w_global)


def test_fedprox_second_step_adds_mu_times_distance() -> None:
    # Epoch 1 starts at w_global, so the proximal gradient is zero; epoch 2 adds mu*(w1 - w0).
    images, labels = _blobs(n=20)
    model = _linear(seed=5)
    mu, lr = 2.0, 0.2
    w0 = _params(model)
    w1, _ = _gd_step(model, images, labels, lr=lr)
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p, value in zip(probe.parameters(), w1, strict=True):
            p.copy_(value)
    plain_w2, _ = _gd_step(probe, images, labels, lr=lr)
    expected = [p2 - lr * mu * (p1 - p0) for p2, p1, p0 in zip(plain_w2, w1, w0, strict=True)]
    _train_prox(model, images, labels, TrainConfig(2, 20, lr=lr), mu=mu)
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def _old_fedprox_loop(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    mu: float,
    seed: int,
) -> None:
    """The training loop as it was with FedProx inside train.py (TrainConfig.mu)."""
    generator = torch.Generator().manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    anchor = [p.detach().clone() for p in trainable]
    model.train()
    for _epoch in range(config.local_epochs):
        order = torch.randperm(labels.shape[0], generator=generator)
        for first in range(0, labels.shape[0], config.batch_size):
            batch = order[first : first + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            distance = sum(((p - w0) ** 2).sum() for p, w0 in zip(trainable, anchor, strict=True))
            torch.autograd.backward(loss + 0.5 * mu * distance)
            optimizer.step()


@pytest.mark.parametrize(("mu", "momentum"), [(0.1, 0.9), (0.01, 0.0)])
def test_fedprox_trains_bit_for_bit_as_the_old_loop(mu: float, momentum: float) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(96, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (96,), generator=gen)
    with seeded_global_rng(1):
        start = build_model("mlp", in_channels=1, num_classes=10, image_size=28)
    old, new = copy.deepcopy(start), copy.deepcopy(start)
    config = TrainConfig(2, 32, lr=0.05, momentum=momentum, weight_decay=1e-4)
    _old_fedprox_loop(old, images, labels, config, mu, seed=7)
    _train_prox(new, images, labels, config, mu, seed=7)
    for name, tensor in old.state_dict().items():
        assert torch.equal(tensor, new.state_dict()[name]), name


def test_mu_in_the_round_config_chooses_fedprox_as_before() -> None:
    assert algorithm_class({}) is ClientAlgorithm
    assert algorithm_class({"mu": 0.0}) is ClientAlgorithm
    assert algorithm_class({"mu": 0.01}) is FedProx
    assert algorithm_class({"strategy": "fedavg", "mu": 0.5}) is FedProx
    assert algorithm_class({"strategy": "fedprox", "mu": 0.0}) is FedProx
    for bad in (-1.0, float("nan"), "x", None):
        with pytest.raises(ConfigError, match="mu"):
            algorithm_class({"mu": bad})


def test_fedprox_with_mu_0_adds_nothing() -> None:
    model = _linear()
    algorithm = FedProx()
    algorithm.before_training(model, RoundContext(1, {"mu": 0.0}, {}))
    assert algorithm.extra_loss(model) is None


def test_fedprox_keeps_no_copy_of_the_model_after_training() -> None:
    model = _linear()
    algorithm = FedProx()
    algorithm.before_training(model, RoundContext(1, {"mu": 1.0}, {}))
    assert algorithm.extra_loss(model) is not None
    weights = {"w": np.zeros(1)}
    assert algorithm.after_training(weights, TrainResult(1, 0.0, 1, 0.0, 0.0, 0.0)) is weights
    assert algorithm.extra_loss(model) is None
