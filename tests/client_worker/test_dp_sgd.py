"""Tests of client_worker/dp_sgd.py: clipping, noise, Poisson sampling, refusals, unwrapping."""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from opacus.accountants import RDPAccountant
from torch import nn

from client_worker.algorithms import ClientAlgorithm, FedProx, RoundContext
from client_worker.algorithms.scaffold import SERVER_CONTROL, Scaffold
from client_worker.device import DevicePlan
from client_worker.dp_accountant import ACCOUNTANT_FILE, KEY_FILE
from client_worker.dp_sgd import DpSgd, check_model, poisson_batches, private_steps
from client_worker.train import TrainConfig, seeded_global_rng, train
from shared.config import ExperimentConfig
from shared.data import Dataset
from shared.errors import ConfigError
from shared.models import build_model, state_to_numpy
from shared.wire import decode_weights
from tests.client_worker.test_worker import FakeAggregator, _run, _spec, _State


def _data(n: int = 12, features: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable blobs as (N, 1, 2, features // 2) images; the spread makes norms differ."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = torch.where(labels[:, None] == 1, 3.0, -3.0) * torch.rand(n, 1, generator=gen)
    points = points + 2.0 * torch.randn(n, features, generator=gen)  # (N, F)
    return points.reshape(n, 1, 2, features // 2), labels


def _model(features: int = 4, hidden: int = 3, seed: int = 0) -> nn.Module:
    with seeded_global_rng(seed):
        return nn.Sequential(
            nn.Flatten(), nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 2)
        )


def _one_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    dp: DpSgd,
    *,
    lr: float = 1.0,
    hooks: Any = None,
    steps: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[float]:
    """Take DP-SGD steps on this batch (expected batch size: its own); return the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    hooks = hooks if hooks is not None else ClientAlgorithm()
    expected = batch_size if batch_size is not None else len(labels)
    with private_steps(
        model, optimizer, dp, batch_size=expected, hooks=hooks, plan=DevicePlan(), seed=seed
    ) as step:
        return [float(step(images, labels)) for _ in range(steps)]


def _clipped_mean_gradient(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, clip: float
) -> list[torch.Tensor]:
    """Each example's gradient by its own backward pass, clipped to `clip`, averaged."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for image, label in zip(images, labels, strict=True):
        loss = F.cross_entropy(model(image[None]), label[None])
        grads = torch.autograd.grad(loss, params)
        norm = _norm(list(grads))
        scale = min(1.0, clip / (float(norm) + 1e-6))  # Opacus's factor, same epsilon
        for acc, g in zip(total, grads, strict=True):
            acc += scale * g
    return [t / len(labels) for t in total]


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of the tensors taken as one vector."""
    norm: torch.Tensor = torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in tensors]))
    return norm


def test_each_example_gradient_is_clipped_as_by_hand() -> None:
    images, labels = _data()
    model, reference = _model(), _model()
    clip = 1.0
    expected = _clipped_mean_gradient(reference, images, labels, clip)
    norms = [
        float(_norm(_clipped_mean_gradient(reference, x, y, 1e9)))
        for x, y in zip(images[:, None], labels[:, None], strict=True)
    ]
    assert min(norms) < clip < max(norms)  # some examples are clipped, some are not
    before = [p.detach().clone() for p in model.parameters()]
    _one_step(model, images, labels, DpSgd(0.0, clip, 1e-5), lr=1.0)
    for p0, p1, g in zip(before, model.parameters(), expected, strict=True):
        torch.testing.assert_close(p0 - p1.detach(), g, rtol=1e-5, atol=1e-7)


def test_no_example_moves_the_weights_by_more_than_the_clip() -> None:
    images, labels = _data()
    images[0] *= 100.0  # an outlier whose gradient is far above the clip
    clip = 0.25
    for image, label in zip(images, labels, strict=True):  # one example a step, sigma 0
        model = _model()
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        _one_step(model, image[None], label[None], DpSgd(0.0, clip, 1e-5), lr=1.0)
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert float(torch.linalg.vector_norm(after - before)) <= clip * (1 + 1e-5)


def test_the_noise_has_std_sigma_times_clip_over_the_batch_size() -> None:
    features, hidden, batch, sigma, clip = 64, 64, 8, 1.5, 0.7
    images, labels = _data(batch, features)
    plain, noisy = _model(features, hidden), _model(features, hidden)
    _one_step(plain, images, labels, DpSgd(0.0, clip, 1e-5), seed=3)
    _one_step(noisy, images, labels, DpSgd(sigma, clip, 1e-5), seed=3)
    noise = torch.cat(
        [
            (p - q).detach().reshape(-1)
            for p, q in zip(plain.parameters(), noisy.parameters(), strict=True)
        ]
    )  # lr 1: the noise added to the mean gradient, (4290,)
    expected_std = sigma * clip / batch
    assert noise.numel() > 4000
    # the sample std of n normal draws is within 3 * std / sqrt(2n) of the true one
    assert float(noise.std()) == pytest.approx(expected_std, rel=3 / math.sqrt(2 * noise.numel()))
    assert abs(float(noise.mean())) < 3 * expected_std / math.sqrt(noise.numel())


def test_poisson_batches_draw_each_example_with_the_sample_rate() -> None:
    gen = torch.Generator().manual_seed(0)
    n, batch = 200, 20
    epochs = [list(poisson_batches(n, batch, gen)) for _ in range(50)]
    assert all(len(steps) == 10 for steps in epochs)  # ceil(n / B) steps per epoch
    sizes = torch.tensor([len(b) for steps in epochs for b in steps], dtype=torch.float64)
    # Binomial(200, 0.1): mean 20, std sqrt(18); 500 draws
    assert float(sizes.mean()) == pytest.approx(20, abs=3 * math.sqrt(18 / 500))
    assert float(sizes.std()) == pytest.approx(math.sqrt(18), rel=0.15)
    assert all(len(set(b.tolist())) == len(b) for steps in epochs for b in steps)  # no repeats


def _sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, array in state_to_numpy(model).items():
        digest.update(name.encode() + array.tobytes())
    return digest.hexdigest()


def _train_dp(seed: int, sigma: float = 1.0) -> tuple[nn.Module, Any]:
    images, labels = _data(64)
    model = _model()
    result = train(
        model, images, labels, TrainConfig(2, 8, lr=0.5), seed=seed, dp=DpSgd(sigma, 1.0, 1e-5)
    )
    return model, result


def test_reruns_with_the_same_seed_are_bit_identical() -> None:
    first, result = _train_dp(seed=7)
    again, _ = _train_dp(seed=7)
    other, _ = _train_dp(seed=8)
    assert _sha256(first) == _sha256(again)
    assert _sha256(first) != _sha256(other)  # another seed: other batches and noise
    assert result.num_steps == 2 * 8  # ceil(64 / 8) per epoch
    assert math.isfinite(result.train_loss)


def test_the_trained_model_keeps_its_names_and_trains_plainly_afterwards() -> None:
    model, _ = _train_dp(seed=1)
    assert list(state_to_numpy(model)) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    copy = _model()
    copy.load_state_dict(model.state_dict())
    images, labels = _data(32)
    for module in (model, copy):  # the Opacus hooks are gone: same as a fresh module
        train(module, images, labels, TrainConfig(1, 8, lr=0.1), seed=0)
    assert _sha256(model) == _sha256(copy)


def test_an_empty_poisson_batch_adds_noise_only() -> None:
    images, labels = _data()
    for sigma in (0.0, 1.0):
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        losses = _one_step(model, images[:0], labels[:0], DpSgd(sigma, 1.0, 1e-5), batch_size=4)
        assert losses == [0.0]  # no examples, no loss (not NaN)
        moved = torch.cat(
            [(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before, strict=True)]
        )
        assert bool(torch.isfinite(moved).all())
        assert bool((moved == 0).all()) == (sigma == 0)  # noise alone moves the weights


def test_fedprox_under_dp_sgd_without_noise_or_clipping_is_plain_fedprox() -> None:
    images, labels = _data()
    context = RoundContext(1, {"mu": 0.5}, {})
    private_model, plain_model = _model(), _model()
    private_prox, plain_prox = FedProx(), FedProx()
    private_prox.before_training(private_model, context)
    plain_prox.before_training(plain_model, context)
    # 3 steps: the proximal term's gradient is 0 at the first and not after
    _one_step(private_model, images, labels, DpSgd(0.0, 1e9, 1e-5), hooks=private_prox, steps=3)
    optimizer = torch.optim.SGD(plain_model.parameters(), lr=1.0)
    for _ in range(3):
        optimizer.zero_grad()
        proximal = plain_prox.extra_loss(plain_model)
        assert proximal is not None
        torch.autograd.backward(F.cross_entropy(plain_model(images), labels) + proximal)
        optimizer.step()
    for p, q in zip(private_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_scaffold_under_dp_sgd_without_noise_or_clipping_is_plain_scaffold() -> None:
    images, labels = _data()
    model = _model()
    names = [name for name, _ in model.named_parameters()]
    gen = torch.Generator().manual_seed(5)
    server = {n: torch.randn(p.shape, generator=gen).numpy() for n, p in model.named_parameters()}
    config = {"strategy": "scaffold", "lr": 1.0, "momentum": 0.0}
    runs = []
    for private in (True, False):
        trained, scaffold = _model(), Scaffold()
        scaffold.load_state_dict({n: 0.5 * server[n] for n in names})  # c_i != 0 and != c
        global_weights = state_to_numpy(trained)
        context = RoundContext(1, config, global_weights, {SERVER_CONTROL: server})
        scaffold.before_training(trained, context)
        if private:
            _one_step(trained, images, labels, DpSgd(0.0, 1e9, 1e-5), hooks=scaffold, steps=2)
        else:
            optimizer = torch.optim.SGD(trained.parameters(), lr=1.0)
            for _ in range(2):
                optimizer.zero_grad()
                torch.autograd.backward(F.cross_entropy(trained(images), labels))
                optimizer.step()
                scaffold.after_step(trained)
        runs.append(trained)
    for p, q in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class _Recording(ClientAlgorithm):
    """Counts the hook calls of the steps."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def transform_gradients(self, model: nn.Module) -> None:
        assert all(p.grad is not None for p in model.parameters())  # the private gradient
        self.calls.append("transform")

    def after_step(self, model: nn.Module) -> None:
        self.calls.append("after")


def test_the_hooks_see_each_private_step() -> None:
    images, labels = _data()
    hooks = _Recording()
    _one_step(_model(), images, labels, DpSgd(1.0, 1.0, 1e-5), hooks=hooks, steps=2)
    assert hooks.calls == ["transform", "after", "transform", "after"]


@pytest.mark.parametrize("name", ["simple-cnn-bn", "resnet18"])
def test_batch_norm_models_are_refused_naming_the_layer(name: str) -> None:
    model = build_model(name, in_channels=1, num_classes=2, image_size=28)
    with pytest.raises(ConfigError, match=r"DP-SGD cannot train this model: layer '.*' \(Batch"):
        check_model(model)
    with pytest.raises(ConfigError, match="GroupNorm"):
        check_model(model)


@pytest.mark.parametrize("name", ["mlp", "cnn", "simple-cnn"])
def test_models_without_batch_norm_pass(name: str) -> None:
    check_model(build_model(name, in_channels=1, num_classes=2, image_size=28))


def test_low_precision_is_refused() -> None:
    images, labels = _data()
    plan = DevicePlan(precision="bf16")
    with pytest.raises(ConfigError, match="DP-SGD trains in fp32 only"):
        train(_model(), images, labels, TrainConfig(1, 4, lr=0.1), seed=0,
              plan=plan, dp=DpSgd(1.0, 1.0, 1e-5))  # fmt: skip


@pytest.mark.parametrize(
    ("num_examples", "batch_size", "delta", "message"),
    [
        (400, 32, 1 / 400, r"delta \(0.0025\) must be below 1 / num_examples \(1/400"),
        (400, 32, 1e-2, r"delta \(0.01\) must be below"),
        (20, 20, 1e-5, r"batch_size \(20\) must be below this client's 20 examples"),
    ],
)
def test_data_too_small_for_the_guarantee_is_refused(
    num_examples: int, batch_size: int, delta: float, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        DpSgd(1.0, 1.0, delta).sample_rate(num_examples, batch_size)


def test_the_sample_rate_is_batch_size_over_examples() -> None:
    assert DpSgd(1.0, 1.0, 1e-5).sample_rate(400, 32) == 0.08


@pytest.mark.parametrize(
    "section",
    [
        {"noise_multiplier": "loud", "max_grad_norm": 1.0, "delta": 1e-5},
        {"max_grad_norm": 1.0, "delta": 1e-5},
        {"noise_multiplier": 1.0, "max_grad_norm": 0.0, "delta": 1e-5},
        "yes",
    ],
)
def test_an_unusable_round_config_section_is_a_config_error(section: Any) -> None:
    with pytest.raises(ConfigError, match="the round config's dp_sgd"):
        DpSgd.from_round_config({"dp_sgd": section})


def test_a_round_config_without_dp_sgd_trains_plainly() -> None:
    assert DpSgd.from_round_config({"lr": 0.1}) is None
    section = {"noise_multiplier": 1.0, "max_grad_norm": 2.0, "delta": 1e-6}
    assert DpSgd.from_round_config({"dp_sgd": section | {"target_epsilon": None}}) == DpSgd(
        1.0, 2.0, 1e-6
    )


# ------------------------------------------------------------------ the worker

# the worker fixtures' clients: 20 examples, batches of 8 over 2 epochs: q 0.4, 6 steps a round
WORKER_DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-2, "target_epsilon": None}


def _opacus_epsilon(
    steps: int, *, q: float = 0.4, sigma: float = 1.0, delta: float = 1e-2
) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    return float(accountant.get_epsilon(delta))


def _dp_worker(
    rounds: list[int],
    weights: dict[str, np.ndarray],
    config: ExperimentConfig,
    dataset: Dataset,
    state_dir: Path,
    section: dict[str, Any],
) -> tuple[FakeAggregator, Any]:
    states = [_State(r, "training", ["1"]) for r in rounds] + [_State(rounds[-1], "finished")]
    fake = FakeAggregator(states, weights)
    fake.round_config = {"dp_sgd": section}
    return fake, _run(fake, config, dataset, state_dir=state_dir)


def test_each_update_reports_the_clients_epsilon_which_survives_a_restart(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    fake, summary = _dp_worker([1, 2], global_weights, config, dataset, tmp_path, WORKER_DP)
    assert summary.outcome == "finished"
    assert summary.rounds_trained == 2
    epsilons = [post["metrics"]["dp_epsilon"] for post in fake.posts]
    assert epsilons == pytest.approx([_opacus_epsilon(6), _opacus_epsilon(12)], rel=1e-12)
    for post in fake.posts:
        assert post["metrics"]["dp_delta"] == 1e-2
        assert "train_loss" not in post["metrics"]  # a plain statistic of the examples
    assert (tmp_path / "1" / f"{ACCOUNTANT_FILE}.npz").is_file()
    # a restarted worker (same state dir) carries on from what the client spent
    fake, _ = _dp_worker([3], global_weights, config, dataset, tmp_path, WORKER_DP)
    (post,) = fake.posts
    assert post["metrics"]["dp_epsilon"] == pytest.approx(_opacus_epsilon(18), rel=1e-12)


def test_a_client_stops_contributing_before_passing_its_target(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = (_opacus_epsilon(12) + _opacus_epsilon(18)) / 2  # room for two rounds, not three
    section = WORKER_DP | {"target_epsilon": target}
    with caplog.at_level(logging.INFO, logger="client_worker.worker"):
        fake, summary = _dp_worker([1, 2, 3, 4], global_weights, config, dataset, tmp_path, section)
    assert [post["round"] for post in fake.posts] == [1, 2]
    assert summary.outcome == "budget_spent"
    assert summary.rounds_trained == 2
    assert summary.last_round == 3
    assert "client 1 budget_spent" in summary.line()
    assert (
        "round 3: privacy budget spent, the client stops contributing: its 6 DP-SGD steps "
        f"would take epsilon from {_opacus_epsilon(12):.4g} to {_opacus_epsilon(18):.4g}, "
        f"past target_epsilon {target:g}"
    ) in caplog.text
    # restarted, it still declines: the budget is spent for good
    fake, summary = _dp_worker([3], global_weights, config, dataset, tmp_path, section)
    assert fake.posts == []
    assert summary.outcome == "budget_spent"


def test_a_client_too_small_for_its_delta_refuses_to_train(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    section = WORKER_DP | {"delta": 0.1}  # the clients hold 20 examples: delta must be < 0.05
    with pytest.raises(ConfigError, match=r"delta \(0.1\) must be below 1 / num_examples \(1/20"):
        _dp_worker([1], global_weights, config, dataset, tmp_path, section)
    assert not (tmp_path / "1").exists()  # nothing trained, nothing spent


def test_the_noise_follows_the_clients_secret_key_not_the_experiment_seed(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    posted = {}
    for name in ("a", "b"):  # two fresh state dirs: two keys
        fake, _ = _dp_worker([1], global_weights, config, dataset, tmp_path / name, WORKER_DP)
        posted[name] = decode_weights(fake.posts[0]["weights"], spec=_spec())
    assert any(not np.array_equal(posted["a"][k], posted["b"][k]) for k in posted["a"])
    # with a's key (and nothing spent yet) the training is a's, bit for bit
    (tmp_path / "c" / "1").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "1" / f"{KEY_FILE}.npz", tmp_path / "c" / "1")
    fake, _ = _dp_worker([1], global_weights, config, dataset, tmp_path / "c", WORKER_DP)
    again = decode_weights(fake.posts[0]["weights"], spec=_spec())
    assert all(np.array_equal(posted["a"][k], again[k]) for k in again)
