"""Tests of client_worker/local_data.py: feature noise, the held-out local test split."""

from __future__ import annotations

import numpy as np
import torch

from client_worker.local_data import hold_out
from shared.batches import ImageBatches
from shared.config import ExperimentConfig, PartitionConfig
from shared.data import Dataset
from shared.wire import decode_weights
from tests.client_worker.test_worker import FakeAggregator, _run, _State


def _posted_weights(
    config: ExperimentConfig, dataset: Dataset, weights: dict[str, np.ndarray], client_id: str
) -> dict[str, np.ndarray]:
    states = [_State(1, "training", [client_id]), _State(1, "finished")]
    fake = FakeAggregator(states, weights)
    _run(fake, config, dataset, client_id=client_id)
    (post,) = fake.posts
    return {name: np.array(a) for name, a in decode_weights(post["weights"]).items()}


def test_feature_noise_changes_what_every_client_but_the_first_trains_on(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    noisy = config.model_copy(
        update={"partition": PartitionConfig(name="feature_noise", sigma=1.0)}
    )
    for client_id, changed in (("0", False), ("2", True)):
        plain = _posted_weights(config, dataset, global_weights, client_id)
        noised = _posted_weights(noisy, dataset, global_weights, client_id)
        differs = any(not np.array_equal(plain[n], noised[n]) for n in plain)
        assert differs == changed, client_id  # client 0's noise has std 0


def test_a_held_out_local_split_is_not_trained_on_and_reports_its_accuracy(
    config: ExperimentConfig, dataset: Dataset, global_weights: dict[str, np.ndarray]
) -> None:
    held_out = config.model_copy(update={"local_test_fraction": 0.25})
    states = [_State(1, "training", ["1"]), _State(1, "finished")]
    fake = FakeAggregator(states, global_weights)
    _run(fake, held_out, dataset)
    (post,) = fake.posts
    assert post["num_examples"] == 15  # 20 in the partition, 5 held out
    assert 0.0 <= post["metrics"]["local_accuracy"] <= 1.0
    assert post["metrics"]["local_loss"] > 0
    plain = FakeAggregator([_State(1, "training", ["1"]), _State(1, "finished")], global_weights)
    _run(plain, config, dataset)
    assert "local_accuracy" not in plain.posts[0]["metrics"]
    assert plain.posts[0]["num_examples"] == 20


def test_the_held_out_split_is_seeded_and_disjoint_from_the_training_data() -> None:
    pixels = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1)
    images, labels = ImageBatches(pixels, None), torch.arange(20)
    train_images, train_labels, held = hold_out(images, labels, 0.25, seed=3)
    assert held is not None
    test_images, test_labels = held
    assert len(train_labels) == 15
    assert sorted([*train_labels.tolist(), *test_labels.tolist()]) == list(range(20))
    assert torch.equal(train_images.pixels.flatten().long(), train_labels)
    assert torch.equal(test_images.pixels.flatten().long(), test_labels)
    again = hold_out(images, labels, 0.25, seed=3)[2]
    assert again is not None
    assert torch.equal(again[1], test_labels)
    assert hold_out(images, labels, 0.0, seed=3)[2] is None
