"""Every model of the zoo through one federated round: built by the aggregator, trained by a
client with the worker's training loop, posted, aggregated, published."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client_worker.train import TrainConfig, train
from shared.models import MODEL_NAMES, build_model, load_numpy_state, state_to_numpy
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

pytestmark = pytest.mark.slow

# (model, channels, image_size): CIFAR-shaped images, and vit-b-16 (85 M parameters, a 341 MB
# update) on MNIST-shaped ones, which it resizes to 32x32
ROUNDS = [(name, 3, 32) for name in MODEL_NAMES if name != "vit-b-16"] + [("vit-b-16", 1, 28)]
IDS = [f"{name}-{channels}x{size}x{size}" for name, channels, size in ROUNDS]


@pytest.mark.parametrize(("name", "channels", "image_size"), ROUNDS, ids=IDS)
def test_a_zoo_model_trains_a_federated_round(
    start_app: AppFactory, name: str, channels: int, image_size: int
) -> None:
    shape = {"channels": channels, "image_size": image_size, "num_classes": 10}
    config = experiment(
        model=name,
        dataset="synthetic",
        synthetic={**shape, "train_size": 8, "test_size": 4},
        num_rounds=1,
        min_fit_clients=1,
        min_available_clients=1,
    )
    app = start_app(config)
    register(app, "a")
    wait_for(app, lambda s: s["phase"] == "training", timeout=60)
    _, weights = global_model(app)
    model = build_model(name, **config.model_args())
    load_numpy_state(model, weights)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, channels, image_size, image_size, generator=generator)  # (N, C, H, W)
    labels = torch.randint(0, 10, (8,), generator=generator)
    train(model, images, labels, TrainConfig(local_epochs=1, batch_size=4, lr=0.01), seed=0)
    trained = state_to_numpy(model)
    reply = app.post("/receive", content=update_body("a", 1, trained), headers=MSGPACK)
    assert reply.status_code == 200, reply.text
    wait_for(app, lambda s: s["phase"] == "finished", timeout=120)
    (row,) = app.get("/history").json()
    assert row["participants"] == ["a"]
    _, final = global_model(app)
    assert list(final) == list(weights)
    for key, array in final.items():  # one client: the aggregate is its update
        np.testing.assert_array_equal(array, trained[key].astype(array.dtype))
    assert any(not np.array_equal(final[k], weights[k]) for k in weights)  # it trained
