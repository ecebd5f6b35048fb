"""The client algorithm seam: hook order, hooks changing training, state, groups, registry."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from client_worker.algorithms import (
    AlgorithmSession,
    ClientAlgorithm,
    Groups,
    RoundContext,
    StateStore,
    UnknownAlgorithm,
    Weights,
    algorithm_class,
    registry,
)
from client_worker.algorithms.local_round import train_round
from client_worker.train import TrainConfig, TrainResult, train
from shared.config import ExperimentConfig
from shared.data import Dataset
from shared.errors import ConfigError
from shared.wire import decode_groups
from tests.client_worker.test_train import _blobs, _gd_step, _linear, _params
from tests.client_worker.test_worker import FakeAggregator, _run, _State

GROUP = {"c": {"w": np.arange(3, dtype=np.float32)}}


class Recording(ClientAlgorithm):
    """Records each hook call and its arguments; sends one group."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def before_training(self, model: nn.Module, context: RoundContext) -> None:
        self.calls.append(("before_training", (model, context)))

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        self.calls.append(("extra_loss", model))
        return None

    def transform_gradients(self, model: nn.Module) -> None:
        grads = [p.grad is not None for p in model.parameters()]
        self.calls.append(("transform_gradients", all(grads)))

    def after_step(self, model: nn.Module) -> None:
        self.calls.append(("after_step", model))

    def after_training(self, weights: Weights, result: TrainResult) -> Weights:
        self.calls.append(("after_training", (weights, result)))
        return {name: array + 1 for name, array in weights.items()}

    def groups_to_send(self) -> Groups:
        self.calls.append(("groups_to_send", None))
        return {"c": {name: array.copy() for name, array in GROUP["c"].items()}}


def test_hooks_are_called_in_order_with_the_round_arguments() -> None:
    images, labels = _blobs(n=16)
    model = _linear()
    algorithm = Recording()
    context = RoundContext(3, {"update_groups": ["c"]}, {"w": np.zeros(1)}, GROUP)
    update = train_round(model, algorithm, context, images, labels, TrainConfig(2, 8, 0.1), seed=0)
    names = [name for name, _ in algorithm.calls]
    steps = 2 * 2  # two epochs of two batches
    assert names == (
        ["before_training"]
        + ["extra_loss", "transform_gradients", "after_step"] * steps
        + ["after_training", "groups_to_send"]
    )
    assert algorithm.calls[0][1] == (model, context)
    assert all(arg is model for name, arg in algorithm.calls if name == "extra_loss")
    assert all(arg is model for name, arg in algorithm.calls if name == "after_step")
    assert all(arg for name, arg in algorithm.calls if name == "transform_gradients")
    trained, result = algorithm.calls[-2][1]
    assert result is update.result
    assert result.num_steps == steps
    assert set(trained) == {"1.weight", "1.bias"}
    np.testing.assert_array_equal(update.weights["1.bias"], trained["1.bias"] + 1)
    assert list(update.groups) == ["c"]


def test_groups_must_be_those_the_round_config_asks_for() -> None:
    images, labels = _blobs(n=8)
    context = RoundContext(1, {}, {})
    with pytest.raises(ConfigError, match=r"asks updates for the groups \[\].*sends \['c'\]"):
        train_round(_linear(), Recording(), context, images, labels, TrainConfig(1, 8, 0.1), seed=0)


class _ScaledGradients(ClientAlgorithm):
    def transform_gradients(self, model: nn.Module) -> None:
        for p in model.parameters():
            assert p.grad is not None
            p.grad.mul_(2.0)


class _L2(ClientAlgorithm):
    def __init__(self, lam: float) -> None:
        self.lam = lam

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return 0.5 * self.lam * sum((p**2).sum() for p in model.parameters())  # type: ignore[return-value]


def test_a_gradient_transform_changes_the_step() -> None:
    # Plain SGD on the full batch: doubling the gradient is doubling the learning rate.
    images, labels = _blobs(n=20)
    model = _linear(seed=2)
    expected, _ = _gd_step(model, images, labels, lr=0.6)
    train(model, images, labels, TrainConfig(1, 20, lr=0.3), seed=0, hooks=_ScaledGradients())
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_an_extra_loss_term_changes_the_objective() -> None:
    # (lam/2) * ||w||^2 added to the loss is SGD's weight decay lam.
    images, labels = _blobs(n=20)
    model = _linear(seed=3)
    expected, _ = _gd_step(model, images, labels, lr=0.3, extra=0.1)
    before = _params(model)
    result = train(model, images, labels, TrainConfig(1, 20, lr=0.3), seed=0, hooks=_L2(0.1))
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    plain = _linear(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(_params(plain), before, strict=True))
    assert result.train_loss > 0  # the reported loss leaves the extra term out


class _Counter(ClientAlgorithm):
    """Keeps a count and a tensor across rounds."""

    name = "counter"

    def __init__(self) -> None:
        self.count = np.zeros((), np.int64)
        self.total = np.zeros(3, np.float32)

    def after_training(self, weights: Weights, result: TrainResult) -> Weights:
        self.count = self.count + 1
        self.total = self.total + 0.5
        return weights

    def state_dict(self) -> Weights:
        return {"count": self.count, "total": self.total, "file": np.ones(1)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.count, self.total = state["count"], state["total"]


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ALGORITHMS", {**registry.ALGORITHMS, "counter": _Counter})


@pytest.mark.usefixtures("counter")
def test_state_survives_a_restart_and_only_accepted_rounds_count(tmp_path: Path) -> None:
    round_config = {"strategy": "counter"}
    session = AlgorithmSession("7", tmp_path)
    for _ in range(2):
        algorithm = session.for_round(round_config)
        algorithm.after_training({}, _result())
        session.commit()
    session.for_round(round_config).after_training({}, _result())
    session.discard()  # the third round's update was not accepted

    restarted = AlgorithmSession("7", tmp_path).for_round(round_config)
    assert isinstance(restarted, _Counter)
    assert int(restarted.count) == 2
    np.testing.assert_array_equal(restarted.total, np.full(3, 1.0, np.float32))
    assert sorted(p.name for p in (tmp_path / "7").iterdir()) == ["counter.npz"]


def _result() -> TrainResult:
    return TrainResult(1, 0.0, 1, 0.0, 0.0, 0.0)


def test_state_files_hold_no_pickle(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "a")
    with pytest.raises(ValueError, match="no pickle"):
        store.save("x", {"bad": np.array([{}], dtype=object)})
    assert store.load("x") == {}
    store.save("x", {"w": np.ones(2)})
    store.save("x", {})
    assert not store.path("x").exists()
    store.path("x").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read the algorithm state"):
        store.load("x")


def test_registry_errors_name_the_unknown_algorithm_and_list_the_known() -> None:
    with pytest.raises(UnknownAlgorithm, match=r"'dpsgd'.*known: dpfedavg, fedadagrad, .*fedavgm"):
        algorithm_class({"strategy": "dpsgd"})
    with pytest.raises(ConfigError, match="fedprox"):
        algorithm_class({"strategy": 3})
    server_only = ["fedavg", "fedavgm", "fedmedian", "fedadagrad", "fedadam", "fedyogi"]
    for name in (*server_only, "fedtrimmedavg", "krum"):
        assert algorithm_class({"strategy": name}) is ClientAlgorithm


class _Echo(ClientAlgorithm):
    """Sends back the published group "c" doubled, as group "c_delta"."""

    name = "echo"

    def before_training(self, model: nn.Module, context: RoundContext) -> None:
        self.received = {k: np.array(v) for k, v in context.groups["c"].items()}

    def groups_to_send(self) -> Groups:
        return {"c_delta": {k: 2 * v for k, v in self.received.items()}}


def test_groups_go_from_the_published_message_through_the_worker_and_back(
    config: ExperimentConfig,
    dataset: Dataset,
    global_weights: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(registry, "ALGORITHMS", {**registry.ALGORITHMS, "echo": _Echo})
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    fake.groups = GROUP
    fake.round_config = {"strategy": "echo", "update_groups": ["c_delta"]}
    summary = _run(fake, config, dataset, state_dir=tmp_path)
    assert summary.rounds_trained == 1
    (post,) = fake.posts
    assert post["protocol"] == 2
    groups = decode_groups(post["groups"])
    np.testing.assert_array_equal(groups["c_delta"]["w"], 2 * GROUP["c"]["w"])


def test_a_version_1_message_still_trains_and_posts_version_1(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    fake = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    fake.round_config = {"mu": 0.01}  # FedProx, as before: no groups
    _run(fake, config, dataset)
    (post,) = fake.posts
    assert post["protocol"] == 1
    assert "groups" not in post


def test_the_example_of_docs_worker_md_clips_the_gradients() -> None:
    text = (Path(__file__).parents[2] / "docs" / "worker.md").read_text()
    code = text.split("# client_worker/algorithms/clipping.py\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "clipping.py", "exec"), namespace)  # the code of our own docs
    algorithm = namespace["GradientClipping"]()
    model = _linear()
    algorithm.before_training(model, RoundContext(1, {"clip": 0.5}, {}))
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    algorithm.transform_gradients(model)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))) == (
        pytest.approx(0.5, rel=1e-5)
    )
