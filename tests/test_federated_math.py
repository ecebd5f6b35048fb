"""FedAvg against its definition: the worker's training loop with the aggregator's strategy."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from aggregator_service.strategy.mean import WeightedMean
from client_worker.train import TrainConfig, train
from shared.config import ModelArgs
from shared.models import build_model, init_global_weights, load_numpy_state, state_to_numpy
from shared.wire import decode_message, decode_weights, encode_message, spec_of

ARGS: ModelArgs = {"in_channels": 1, "num_classes": 10, "image_size": 8}


def _data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return images, labels


def _client_update(
    global_weights: dict[str, np.ndarray],
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
) -> dict[str, np.ndarray]:
    """Train a copy of the global model locally and send its weights through the wire codec."""
    model = build_model("mlp", **ARGS)
    load_numpy_state(model, global_weights)
    train(model, images, labels, config, seed=1)
    body = encode_message({"weights": state_to_numpy(model)})
    return decode_weights(decode_message(body)["weights"], spec=spec_of(global_weights))


def test_full_batch_round_of_unequal_clients_equals_one_gradient_descent_step() -> None:
    """FedSGD: one full-batch step per client, weighted by its examples, is one step on all."""
    # 48 and 16 examples: an unweighted mean would step along (g1 + g2) / 2, not the whole
    # data's gradient (48 g1 + 16 g2) / 64.
    global_weights = init_global_weights("mlp", seed=0, **ARGS)
    images, labels = _data(0, 64)
    shards = [(images[:48], labels[:48]), (images[48:], labels[48:])]
    lr = 0.1
    config = TrainConfig(local_epochs=1, batch_size=64, lr=lr)  # one batch: the whole shard
    strategy = WeightedMean()
    strategy.begin_round(1, global_weights)
    for shard_images, shard_labels in shards:
        update = _client_update(global_weights, shard_images, shard_labels, config)
        strategy.accumulate(update, len(shard_labels))
    federated = strategy.finalize()

    reference = build_model("mlp", **ARGS)
    load_numpy_state(reference, global_weights)
    loss = functional.cross_entropy(reference(images), labels)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    names = [name for name, _ in reference.named_parameters()]
    for name, param, grad in zip(names, reference.parameters(), grads, strict=True):
        expected = (param - lr * grad).detach().numpy()
        np.testing.assert_allclose(federated[name], expected, rtol=1e-5, atol=1e-6)


def test_fedavg_is_the_example_weighted_mean_of_local_models() -> None:
    global_weights = init_global_weights("mlp", seed=3, **ARGS)
    config = TrainConfig(local_epochs=2, batch_size=8, lr=0.05, momentum=0.9)
    sizes = [16, 24, 40, 64]  # unequal: an unweighted mean of the local models fails
    local_models = [
        _client_update(global_weights, *_data(10 + k, n), config) for k, n in enumerate(sizes)
    ]
    strategy = WeightedMean()
    strategy.begin_round(1, global_weights)
    for weights, n in zip(local_models, sizes, strict=True):
        strategy.accumulate(weights, n)
    federated = strategy.finalize()
    for name in global_weights:
        weighted = sum(
            w[name].astype(np.float64) * n for w, n in zip(local_models, sizes, strict=True)
        )
        mean = weighted / sum(sizes)
        np.testing.assert_allclose(federated[name], mean, rtol=1e-6, atol=1e-7)
        assert not np.allclose(federated[name], global_weights[name])  # training did move it
