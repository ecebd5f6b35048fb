"""Tests of client_worker/dp_accountant.py: epsilon as Opacus computes it, kept across restarts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp

from client_worker.algorithms import StateStore
from client_worker.dp_accountant import (
    ACCOUNTANT_FILE,
    KEY_FILE,
    PrivacyLedger,
    accountant_from_state,
    accountant_state,
)
from client_worker.dp_sgd import DpSgd, steps_per_round
from client_worker.train import TrainConfig, TrainResult
from shared.config import load_config
from shared.errors import ConfigError

N, BATCH, EPOCHS = 400, 32, 2  # configs/dp-sgd.yaml's clients: q = 0.08, 26 steps a round
DP = DpSgd(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
CONFIG = TrainConfig(EPOCHS, BATCH, lr=0.5)


def _epsilon(*, q: float, sigma: float, steps: int, delta: float) -> float:
    """The subsampled Gaussian's epsilon from Opacus's RDP analysis directly, not its accountant."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    curve = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    epsilon, _ = rdp.get_privacy_spent(orders=orders, rdp=curve, delta=delta)
    return float(epsilon)


def _result(num_steps: int = math.ceil(N / BATCH) * EPOCHS) -> TrainResult:
    return TrainResult(
        num_examples=N,
        num_steps=num_steps,
        train_loss=1.0,
        train_seconds=1.0,
        train_cpu_seconds=1.0,
        examples_per_second=N * EPOCHS,
    )


def test_epsilon_grows_with_the_rounds_as_the_rdp_analysis_says(tmp_path: Path) -> None:
    ledger = PrivacyLedger(StateStore(tmp_path, "3"))
    assert ledger.epsilon(DP.delta) == 0.0
    steps = steps_per_round(N, BATCH, EPOCHS)
    assert steps == 26
    spent = []
    for round_index in range(1, 6):
        metrics = ledger.spend(DP, _result(), BATCH)
        assert metrics["dp_delta"] == DP.delta
        expected = _epsilon(q=BATCH / N, sigma=1.0, steps=steps * round_index, delta=DP.delta)
        assert metrics["dp_epsilon"] == pytest.approx(expected, rel=1e-12)
        spent.append(metrics["dp_epsilon"])
    assert spent == sorted(spent)
    assert len(set(spent)) == 5
    # configs/dp-sgd.yaml's comment: five rounds take a client to 7.1, below its target 8
    assert spent[-1] == pytest.approx(7.12, abs=0.01)


def test_rounds_of_other_settings_compose(tmp_path: Path) -> None:
    ledger = PrivacyLedger(None)
    ledger.spend(DP, _result(), BATCH)
    louder = DpSgd(2.0, 1.0, DP.delta)
    ledger.spend(louder, _result(num_steps=13), BATCH)
    orders = RDPAccountant.DEFAULT_ALPHAS
    curve = np.add(
        rdp.compute_rdp(q=BATCH / N, noise_multiplier=1.0, steps=26, orders=orders),
        rdp.compute_rdp(q=BATCH / N, noise_multiplier=2.0, steps=13, orders=orders),
    )
    expected, _ = rdp.get_privacy_spent(orders=orders, rdp=curve, delta=DP.delta)
    assert ledger.epsilon(DP.delta) == pytest.approx(expected, rel=1e-12)


def test_the_accountant_survives_a_restart(tmp_path: Path) -> None:
    first = PrivacyLedger(StateStore(tmp_path, "7"))
    for _ in range(3):
        first.spend(DP, _result(), BATCH)
    assert (tmp_path / "7" / f"{ACCOUNTANT_FILE}.npz").is_file()
    restarted = PrivacyLedger(StateStore(tmp_path, "7"))  # a new worker process
    assert restarted.epsilon(DP.delta) == first.epsilon(DP.delta)
    fourth = restarted.spend(DP, _result(), BATCH)["dp_epsilon"]
    expected = _epsilon(q=BATCH / N, sigma=1.0, steps=4 * 26, delta=DP.delta)
    assert fourth == pytest.approx(expected, rel=1e-12)
    assert PrivacyLedger(StateStore(tmp_path, "8")).epsilon(DP.delta) == 0.0  # another client


def test_without_a_state_dir_the_ledger_lives_in_memory(tmp_path: Path) -> None:
    ledger = PrivacyLedger(None)
    ledger.spend(DP, _result(), BATCH)
    assert ledger.epsilon(DP.delta) > 0
    assert PrivacyLedger(None).epsilon(DP.delta) == 0.0


def test_the_state_round_trips_and_a_foreign_state_is_refused() -> None:
    accountant = RDPAccountant()
    for noise, steps in ((1.0, 4), (0.5, 2)):
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=0.1)
    state = accountant_state(accountant)
    assert state["steps"].tolist() == [4, 2]
    again = accountant_from_state(state)
    assert again.history == accountant.history
    assert again.get_epsilon(1e-5) == accountant.get_epsilon(1e-5)
    with pytest.raises(ConfigError, match="accountant state holds"):
        accountant_from_state({"steps": np.array([1])})


def test_a_round_past_the_target_is_declined_with_the_numbers() -> None:
    steps = steps_per_round(N, BATCH, EPOCHS)
    five = _epsilon(q=BATCH / N, sigma=1.0, steps=5 * steps, delta=DP.delta)
    six = _epsilon(q=BATCH / N, sigma=1.0, steps=6 * steps, delta=DP.delta)
    target = (five + six) / 2  # the sixth round would pass it
    budgeted = DpSgd(1.0, 1.0, DP.delta, target_epsilon=target)
    ledger = PrivacyLedger(None)
    for _ in range(5):
        assert ledger.declines(budgeted, N, CONFIG) is None
        ledger.spend(budgeted, _result(), BATCH)
    reason = ledger.declines(budgeted, N, CONFIG)
    assert reason is not None
    assert f"from {five:.4g} to {six:.4g}, past target_epsilon {target:g}" in reason
    assert ledger.epsilon(DP.delta) == pytest.approx(five)  # declining spends nothing
    assert ledger.declines(DP, N, CONFIG) is None  # without a target, nothing is declined


def test_declining_checks_the_data_first() -> None:
    with pytest.raises(ConfigError, match=r"delta \(0.01\) must be below 1 / num_examples"):
        PrivacyLedger(None).declines(DpSgd(1.0, 1.0, 0.01), N, CONFIG)


def test_the_dp_sgd_config_stays_within_its_target() -> None:
    config = load_config(Path(__file__).parents[2] / "configs" / "dp-sgd.yaml")
    section = config.dp_sgd
    assert section is not None
    assert section.target_epsilon is not None
    n = 4000 // config.num_partitions  # mnist5k's training split, IID
    steps = steps_per_round(n, config.batch_size, config.local_epochs) * config.num_rounds
    q = config.batch_size / n
    spent = _epsilon(q=q, sigma=section.noise_multiplier, steps=steps, delta=section.delta)
    assert spent <= section.target_epsilon


def test_the_training_seed_mixes_in_a_secret_key_kept_in_the_state_dir(tmp_path: Path) -> None:
    ledger = PrivacyLedger(StateStore(tmp_path, "3"))
    assert not (tmp_path / "3").exists()  # made with the first training, not before
    seed = ledger.training_seed(1234)
    assert seed != 1234
    assert 0 <= seed < 2**64
    key = np.load(tmp_path / "3" / f"{KEY_FILE}.npz")["key"]
    assert key.dtype == np.uint8
    assert key.shape == (32,)
    assert ledger.training_seed(1235) != seed  # another round, another seed
    restarted = PrivacyLedger(StateStore(tmp_path, "3"))
    assert restarted.training_seed(1234) == seed  # the same key after a restart
    assert PrivacyLedger(StateStore(tmp_path, "4")).training_seed(1234) != seed  # another client
    assert PrivacyLedger(None).training_seed(1234) != PrivacyLedger(None).training_seed(1234)


def test_a_damaged_key_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path, "3").save(KEY_FILE, {"key": np.zeros(4, np.uint8)})
    with pytest.raises(ConfigError, match=r"DP-SGD key in .*dp_sgd_key\.npz is not 32 bytes"):
        PrivacyLedger(StateStore(tmp_path, "3")).training_seed(0)
