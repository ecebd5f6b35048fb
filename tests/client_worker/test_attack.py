"""Tests of simulated byzantine clients: the attacks, their choice, what reaches the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from client_worker.attack import (
    attacked_weights,
    describe_attack,
    gaussian_noise,
    select_attack,
    sign_flip,
)
from client_worker.settings import WorkerSettings
from client_worker.worker import run_worker
from shared.config import ExperimentConfig, GaussianAttack, SignFlipAttack, load_config
from shared.errors import ConfigError
from shared.wire import decode_message, decode_weights
from tests.aggregator_service.helpers import experiment
from tests.aggregator_service.serving import serve

GLOBAL: dict[str, np.ndarray] = {
    "w": np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32),
    "steps": np.array(7, dtype=np.int64),
}
TRAINED: dict[str, np.ndarray] = {
    "w": np.array([[1.5, 1.0], [-1.0, 0.25]], dtype=np.float32),
    "steps": np.array(9, dtype=np.int64),
}


def test_sign_flip_reverses_and_scales_the_update() -> None:
    sent = sign_flip(GLOBAL, TRAINED, scale=10.0)
    # global - 10 * (trained - global): 1 - 10 * 0.5, 2 - 10 * (-1), -1 - 0, 0.5 - 10 * (-0.25)
    expected = np.array([[-4.0, 12.0], [-1.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(sent["w"], expected)
    assert sent["w"].dtype == np.float32
    assert sent["steps"] is TRAINED["steps"]  # integer tensors are sent as trained


def test_sign_flip_with_scale_1_mirrors_the_trained_weights_through_the_global_ones() -> None:
    sent = sign_flip(GLOBAL, TRAINED, scale=1.0)
    np.testing.assert_array_equal(sent["w"], [[0.5, 3.0], [-1.0, 0.75]])


def test_gaussian_noise_replaces_the_trained_weights() -> None:
    class _Fixed:
        """A generator whose standard normal draws are 1, -2, 0.5, 3 in turn."""

        def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
            return np.array([1.0, -2.0, 0.5, 3.0]).reshape(shape)

    rng: Any = _Fixed()
    sent = gaussian_noise(GLOBAL, TRAINED, std=0.5, rng=rng)
    # global + 0.5 * draws: the trained weights play no part
    expected = np.array([[1.5, 1.0], [-0.75, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(sent["w"], expected)
    assert sent["steps"] is TRAINED["steps"]


def test_gaussian_noise_has_the_asked_spread() -> None:
    zeros = {"w": np.zeros((200, 200), np.float32)}
    sent = gaussian_noise(zeros, zeros, std=2.0, rng=np.random.default_rng(0))
    assert abs(float(sent["w"].mean())) < 0.05
    assert abs(float(sent["w"].std()) - 2.0) < 0.05


def test_a_gaussian_attack_is_bit_identical_on_a_rerun_and_differs_by_client_and_round() -> None:
    attack = GaussianAttack(attack="gaussian", clients="0", std=1.0)

    def sent(seed: int, client: int, server_round: int) -> np.ndarray:
        weights = attacked_weights(
            attack, GLOBAL, TRAINED, seed=seed, client_index=client, server_round=server_round
        )
        return weights["w"]

    np.testing.assert_array_equal(sent(0, 1, 3), sent(0, 1, 3))
    for other in (sent(1, 1, 3), sent(0, 2, 3), sent(0, 1, 4)):
        assert not np.array_equal(other, sent(0, 1, 3))


def test_a_sign_flip_attack_uses_its_scale() -> None:
    attack = SignFlipAttack(attack="sign_flip", clients="0", scale=2.0)
    weights = attacked_weights(attack, GLOBAL, TRAINED, seed=0, client_index=0, server_round=1)
    np.testing.assert_array_equal(weights["w"], [[0.0, 4.0], [-1.0, 1.0]])


def test_an_attack_needs_the_global_tensor_of_each_sent_one() -> None:
    with pytest.raises(ValueError, match="'w'"):
        sign_flip({"w": np.zeros(3, np.float32)}, TRAINED, scale=1.0)


def test_the_first_matching_attack_applies() -> None:
    flip = SignFlipAttack(attack="sign_flip", clients="0-1")
    noise = GaussianAttack(attack="gaussian", clients="1,5")
    assert select_attack([flip, noise], 1) is flip
    assert select_attack([flip, noise], 5) is noise
    assert select_attack([flip, noise], 2) is None
    assert "sign flip, scale 10" in describe_attack(flip)
    assert "gaussian noise, std 1" in describe_attack(noise)


def test_the_config_lists_typed_attacks_with_defaults() -> None:
    config = load_config(
        None,
        {
            "byzantine": [
                {"clients": "0-1", "attack": "sign_flip"},
                {"clients": "9", "attack": "gaussian", "std": 0.5},
            ]
        },
    )
    flip, noise = config.byzantine
    assert flip == SignFlipAttack(attack="sign_flip", clients="0-1", scale=10.0)
    assert noise == GaussianAttack(attack="gaussian", clients="9", std=0.5)
    assert load_config().byzantine == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"clients": "0", "attack": "label_flip"}, "label_flip"),
        ({"clients": "0", "attack": "sign_flip", "std": 1.0}, "unknown key"),
        ({"clients": "0", "attack": "gaussian", "std": 0}, "std"),
        ({"attack": "gaussian"}, "clients"),
    ],
)
def test_bad_attacks_are_config_errors(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"byzantine": [entry]})


def test_a_bad_selector_is_a_config_error_naming_the_section() -> None:
    with pytest.raises(ConfigError, match="byzantine clients selector '1-x'"):
        select_attack([SignFlipAttack(attack="sign_flip", clients="1-x")], 0)


# ------------------------------------------------------------- through a real aggregator


def _tiny(**overrides: Any) -> ExperimentConfig:
    synthetic = {"channels": 1, "image_size": 4, "num_classes": 3, "train_size": 40}
    return experiment(
        dataset="synthetic",
        synthetic={**synthetic, "test_size": 10},
        model="mlp",
        num_partitions=2,
        num_rounds=1,
        min_fit_clients=1,
        min_available_clients=1,
        local_epochs=1,
        seed=3,
        **overrides,
    )


def _one_round(tmp_path: Path, config: ExperimentConfig) -> tuple[dict[str, np.ndarray], ...]:
    """Client 1 alone trains one FedAvg round; return the initial and the final global model."""
    settings = AggregatorSettings(state_dir=tmp_path / "state")
    with serve(create_app(settings, config)) as (url, _):
        initial = _model(url)
        worker = WorkerSettings(server_url=url, client_id="1", long_poll_wait_s=2)
        summary = run_worker(worker, config)
        final = _model(url)
    assert (summary.outcome, summary.rounds_trained) == ("finished", 1)
    return initial, final


def _model(url: str) -> dict[str, np.ndarray]:
    reply = httpx.get(f"{url}/get_weights", timeout=10)
    assert reply.status_code == 200, reply.text
    return decode_weights(decode_message(reply.content)["weights"])


def test_an_attacked_update_reaches_the_aggregator_as_specified(tmp_path: Path) -> None:
    # One client: the FedAvg aggregate is exactly the update it sent.
    initial, honest = _one_round(tmp_path / "honest", _tiny())
    flip = [{"clients": "1", "attack": "sign_flip", "scale": 10.0}]
    _, flipped = _one_round(tmp_path / "flip", _tiny(byzantine=flip))
    noise = [{"clients": "0-1", "attack": "gaussian", "std": 0.5}]
    _, noisy = _one_round(tmp_path / "noise", _tiny(byzantine=noise))
    _, noisy_again = _one_round(tmp_path / "again", _tiny(byzantine=noise))
    assert list(flipped) == list(initial)
    for name, start in initial.items():
        g, h = start.astype(np.float64), honest[name].astype(np.float64)
        assert not np.array_equal(h, g)  # client 1 trained
        np.testing.assert_array_equal(flipped[name], (g - 10.0 * (h - g)).astype(np.float32))
        np.testing.assert_array_equal(noisy[name], noisy_again[name])  # seeded
    expected = attacked_weights(
        GaussianAttack(attack="gaussian", clients="1", std=0.5),
        initial,
        honest,
        seed=3,
        client_index=1,
        server_round=1,
    )
    for name, array in expected.items():
        np.testing.assert_array_equal(noisy[name], array)
