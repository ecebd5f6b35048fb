"""DP-SGD on the aggregator: the settings reach the clients, epsilon reaches /history."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from shared.errors import ConfigError
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

SECTION = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "target_epsilon": 8.0}


def test_the_round_config_carries_dp_sgd_and_history_the_largest_epsilon(
    start_app: AppFactory,
) -> None:
    app = start_app(experiment(num_rounds=1, dp_sgd=SECTION))
    register(app, "a", "b")
    wait_for(app, lambda s: s["phase"] == "training")
    message, weights = global_model(app)
    assert message["config"]["dp_sgd"] == SECTION | {"delta": 1e-5}
    for client_id, epsilon in (("a", 2.5), ("b", 4.0)):
        metrics = {"dp_epsilon": epsilon, "dp_delta": 1e-5, "train_seconds": 1.0}
        body = update_body(client_id, 1, weights, metrics=metrics)
        reply = app.post("/receive", content=body, headers=MSGPACK)
        assert reply.status_code == 200, reply.text
    wait_for(app, lambda s: s["phase"] == "finished")
    (row,) = app.get("/history").json()
    assert row["dp_sgd_epsilon_max"] == 4.0
    assert row["clients"]["a"]["dp_epsilon"] == 2.5
    assert row["train_loss"] is None  # DP-SGD clients do not report it


def test_a_batch_norm_model_under_dp_sgd_is_refused_at_start(tmp_path: Path) -> None:
    settings = AggregatorSettings(state_dir=tmp_path / "state")
    message = (
        r"dp_sgd cannot train model 'simple-cnn-bn': its BatchNorm layers \(1 \(BatchNorm2d\), "
        r"5 \(BatchNorm2d\), 10 \(BatchNorm1d\), ...\) normalize each example by its batch, "
        r"so no per-example gradient exists to clip. Use a model without BatchNorm .* GroupNorm"
    )
    with (
        pytest.raises(ConfigError, match=message),
        TestClient(create_app(settings, experiment(model="simple-cnn-bn", dp_sgd=SECTION))),
    ):
        pass
    with TestClient(create_app(settings, experiment(model="simple-cnn-bn"))):
        pass  # without DP-SGD it is fine
