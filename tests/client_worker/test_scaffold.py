"""Tests of client_worker/algorithms/scaffold.py: corrected steps and option II, by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from client_worker.algorithms import AlgorithmSession, RoundContext, algorithm_class
from client_worker.algorithms.local_round import LocalUpdate, train_round
from client_worker.algorithms.personal import Personalized
from client_worker.algorithms.scaffold import (
    CONTROL_DELTA,
    SERVER_CONTROL,
    Scaffold,
    control_variate_update,
)
from client_worker.train import TrainConfig, seeded_global_rng
from shared.errors import ConfigError
from shared.models import state_to_numpy
from tests.client_worker.test_train import _blobs, _linear

LR = 0.3
ROUND_CONFIG: dict[str, Any] = {
    "strategy": "scaffold",
    "lr": LR,
    "momentum": 0.0,
    "update_groups": [CONTROL_DELTA],
}


def test_option_ii_by_hand() -> None:
    # (x - y) / (K * lr) = [0.5, -0.5] / (2 * 0.25) = [1, -1]; c_i - c = [0.25, -1.25]
    c_plus = control_variate_update(
        np.array([0.5, -1.0]),
        np.array([0.25, 0.25]),
        np.array([1.0, 2.0], np.float32),
        np.array([0.5, 2.5], np.float32),
        num_steps=2,
        lr=0.25,
    )
    np.testing.assert_array_equal(c_plus, [1.25, -2.25])
    assert c_plus.dtype == np.float64


def _gradient(
    params: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor
) -> list[torch.Tensor]:
    """The full-batch gradient of the linear model's cross-entropy at `params`."""
    weight, bias = (p.detach().clone().requires_grad_(True) for p in params)
    loss = F.cross_entropy(images.reshape(len(images), -1) @ weight.T + bias, labels)
    return list(torch.autograd.grad(loss, [weight, bias]))


def _round(
    algorithm: Scaffold | Personalized,
    model: nn.Module,
    c: dict[str, np.ndarray],
    config: dict[str, Any] = ROUND_CONFIG,
    *,
    epochs: int = 2,
) -> LocalUpdate:
    """Train one full-batch round of `epochs` steps from the weights in `model`."""
    received = {name: array.copy() for name, array in state_to_numpy(model).items()}
    context = RoundContext(1, config, received, {SERVER_CONTROL: c})
    images, labels = _blobs(n=20)
    train_config = TrainConfig(epochs, batch_size=20, lr=LR)
    return train_round(model, algorithm, context, images, labels, train_config, seed=0)


def test_two_corrected_full_batch_steps_give_the_mean_gradient_as_c_i() -> None:
    # With plain SGD, y = x - lr * sum_k (g_k + c - c_i), so option II's
    # c_i+ = c_i - c + (x - y) / (K lr) is the mean of the K gradients g_k.
    model = _linear(seed=5)
    names = ["1.weight", "1.bias"]
    x = [p.detach().clone() for p in model.parameters()]
    c = {n: np.full(tuple(p.shape), 0.2, np.float32) for n, p in zip(names, x, strict=True)}
    c_i = {n: np.full(tuple(p.shape), -0.1, np.float32) for n, p in zip(names, x, strict=True)}
    algorithm = Scaffold()
    algorithm.load_state_dict(c_i)

    update = _round(algorithm, model, c)

    images, labels = _blobs(n=20)
    shift = 0.2 - -0.1  # c - c_i
    g0 = _gradient(x, images, labels)
    x1 = [p - LR * (g + shift) for p, g in zip(x, g0, strict=True)]
    g1 = _gradient(x1, images, labels)
    y = [p - LR * (g + shift) for p, g in zip(x1, g1, strict=True)]
    for name, y_k, a, b in zip(names, y, g0, g1, strict=True):
        np.testing.assert_allclose(update.weights[name], y_k.numpy(), rtol=1e-5, atol=1e-6)
        mean_gradient = ((a + b) / 2).numpy()
        np.testing.assert_allclose(algorithm.control[name], mean_gradient, rtol=1e-4, atol=1e-5)
        delta = update.groups[CONTROL_DELTA][name]
        np.testing.assert_allclose(delta, mean_gradient - -0.1, rtol=1e-4, atol=1e-5)
        assert delta.dtype == np.float32
    assert sorted(update.groups) == [CONTROL_DELTA]
    assert list(algorithm.state_dict()) == names


def test_an_empty_server_control_is_zero_and_c_i_starts_at_zero() -> None:
    model = _linear(seed=1)
    x = [p.detach().clone() for p in model.parameters()]
    algorithm = Scaffold()
    update = _round(algorithm, model, {}, epochs=1)
    images, labels = _blobs(n=20)
    for name, p, g in zip(["1.weight", "1.bias"], x, _gradient(x, images, labels), strict=True):
        np.testing.assert_allclose(update.weights[name], (p - LR * g).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            update.groups[CONTROL_DELTA][name], g.numpy(), rtol=1e-4, atol=1e-5
        )


def test_c_i_survives_a_restart_and_only_accepted_rounds_change_it(tmp_path: Path) -> None:
    session = AlgorithmSession("4", tmp_path)
    algorithm = session.for_round(ROUND_CONFIG)
    assert isinstance(algorithm, Scaffold)
    _round(algorithm, _linear(seed=2), {})
    session.commit()  # the update was accepted
    assert (tmp_path / "4" / "scaffold.npz").is_file()
    kept = {name: array.copy() for name, array in algorithm.control.items()}
    assert all(np.any(array != 0) for array in kept.values())

    restarted = AlgorithmSession("4", tmp_path)
    again = restarted.for_round(ROUND_CONFIG)
    assert isinstance(again, Scaffold)
    assert again.control.keys() == kept.keys()
    for name, array in kept.items():
        np.testing.assert_array_equal(again.control[name], array)
    _round(again, _linear(seed=3), {})
    restarted.discard()  # this round's update was refused: c_i stays as saved
    rebuilt = restarted.for_round(ROUND_CONFIG)
    assert isinstance(rebuilt, Scaffold)
    for name, array in kept.items():
        np.testing.assert_array_equal(rebuilt.control[name], array)


def test_the_clients_own_tensors_have_no_control_variate(tmp_path: Path) -> None:
    with seeded_global_rng(0):
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))
    config = {**ROUND_CONFIG, "local_layers": ["2.*"]}
    algorithm = AlgorithmSession("1", tmp_path).for_round(config)
    assert isinstance(algorithm, Personalized)
    assert isinstance(algorithm.inner, Scaffold)
    update = _round(algorithm, model, {}, config)
    assert sorted(update.weights) == ["1.bias", "1.weight"]
    assert sorted(update.groups[CONTROL_DELTA]) == ["1.bias", "1.weight"]


def test_a_server_control_of_another_model_is_refused() -> None:
    assert algorithm_class({"strategy": "scaffold", "mu": 0.5}) is Scaffold
    with pytest.raises(ConfigError, match=r"missing \['1.bias'\]"):
        _round(Scaffold(), _linear(), {"1.weight": np.zeros((2, 4), np.float32)})
    wrong = {"1.weight": np.zeros((4, 2), np.float32), "1.bias": np.zeros(2, np.float32)}
    with pytest.raises(ConfigError, match=r"'1.weight' has shape \(4, 2\)"):
        _round(Scaffold(), _linear(), wrong)


def test_the_correction_stays_out_of_the_momentum_buffer() -> None:
    # One parameter w, a loss with zero gradient (w * 0), c - c_i = 1, lr 0.1, momentum 0.9:
    # each step moves w by exactly -lr * 1, as NIID-Bench's SCAFFOLD; through the gradient
    # the momentum buffer would grow the moves to 0.1, 0.19, 0.271.
    w = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    algorithm = Scaffold()
    algorithm._corrections = [(w, torch.full((1,), 0.1))]  # lr * (c - c_i)
    for _ in range(3):
        optimizer.zero_grad()
        torch.autograd.backward((w * 0).sum())
        optimizer.step()
        algorithm.after_step(nn.Linear(1, 1))
    assert w.item() == pytest.approx(-0.3)
