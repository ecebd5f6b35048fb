"""One client's privacy spending under DP-SGD: Opacus's RDP accountant, kept on disk.

The accountant's history, (noise multiplier, sample rate, steps) runs, is saved in the
client's state dir (`StateStore`, file ``dp_sgd_accountant.npz``) before each update is
posted: an update that may have left the worker is counted, whether or not the
aggregator accepts it, and a restarted worker carries on from what it has spent. A
round is declined when its steps would take epsilon past `target_epsilon`.

The ledger also holds the client's secret key (``dp_sgd_key.npz``, 32 random bytes made
on the first DP-SGD round), mixed into the seed of each DP-SGD training so that the
batches and the noise cannot be regenerated from the experiment seed.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import numpy as np
from opacus.accountants import RDPAccountant

from client_worker.algorithms import StateStore
from client_worker.dp_sgd import DpSgd, private_seed, steps_per_round
from client_worker.train import TrainConfig, TrainResult
from shared.errors import ConfigError

__all__ = [
    "ACCOUNTANT_FILE",
    "KEY_FILE",
    "PrivacyLedger",
    "accountant_from_state",
    "accountant_state",
]

ACCOUNTANT_FILE = "dp_sgd_accountant"  # <state dir>/<client id>/dp_sgd_accountant.npz
KEY_FILE = "dp_sgd_key"  # <state dir>/<client id>/dp_sgd_key.npz: the seed's secret
KEY_BYTES = 32
_FIELDS = ("noise_multiplier", "sample_rate", "steps")


def accountant_state(accountant: RDPAccountant) -> dict[str, np.ndarray]:
    """Return the accountant's history as three arrays, one entry per run of equal steps."""
    history = accountant.state_dict()["history"]
    return {
        "noise_multiplier": np.array([h[0] for h in history], np.float64),
        "sample_rate": np.array([h[1] for h in history], np.float64),
        "steps": np.array([h[2] for h in history], np.int64),
    }


def accountant_from_state(state: Mapping[str, np.ndarray]) -> RDPAccountant:
    """Return an RDP accountant with the history `accountant_state` returned."""
    accountant = RDPAccountant()
    if not state:
        return accountant
    if sorted(state) != sorted(_FIELDS) or len({len(state[f]) for f in _FIELDS}) != 1:
        raise ConfigError(f"a DP-SGD accountant state holds {sorted(state)}, not {_FIELDS}")
    history = [
        (float(noise), float(rate), int(steps))
        for noise, rate, steps in zip(*(state[f] for f in _FIELDS), strict=True)
    ]
    accountant.load_state_dict({"history": history, "mechanism": accountant.mechanism()})
    return accountant


class PrivacyLedger:
    """The RDP accountant of one client, loaded from and saved to its state dir."""

    def __init__(self, store: StateStore | None) -> None:
        self.store = store  # None: kept in memory only (a restart starts from zero)
        state = store.load(ACCOUNTANT_FILE) if store is not None else {}
        self.accountant = accountant_from_state(state)
        self._key: bytes | None = None  # read or made with the first training's seed

    def training_seed(self, seed: int) -> int:
        """Return the seed of a DP-SGD training: `seed` mixed with this client's secret key."""
        if self._key is None:
            self._key = _load_or_make_key(self.store)
        return private_seed(seed, self._key)

    def epsilon(self, delta: float) -> float:
        """Return the epsilon spent so far at `delta` (0 before any step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta))

    def epsilon_after(self, dp: DpSgd, *, sample_rate: float, steps: int) -> float:
        """Return the epsilon this client would have spent after `steps` more steps."""
        trial = accountant_from_state(accountant_state(self.accountant))
        _step(trial, dp, sample_rate, steps)
        return float(trial.get_epsilon(dp.delta))

    def declines(self, dp: DpSgd, num_examples: int, config: TrainConfig) -> str | None:
        """Return why this client cannot train the round (None: it fits its budget).

        Data too small for the guarantee (delta, batch size) is a ConfigError instead.
        """
        sample_rate = dp.sample_rate(num_examples, config.batch_size)
        if dp.target_epsilon is None:
            return None
        steps = steps_per_round(num_examples, config.batch_size, config.local_epochs)
        after = self.epsilon_after(dp, sample_rate=sample_rate, steps=steps)
        if after <= dp.target_epsilon:
            return None
        return (
            f"its {steps} DP-SGD steps would take epsilon from {self.epsilon(dp.delta):.4g} "
            f"to {after:.4g}, past target_epsilon {dp.target_epsilon:g} (delta {dp.delta:g})"
        )

    def spend(self, dp: DpSgd, result: TrainResult, batch_size: int) -> dict[str, float]:
        """Count a training's steps, save the history, return the metrics its update reports."""
        sample_rate = dp.sample_rate(result.num_examples, batch_size)
        _step(self.accountant, dp, sample_rate, result.num_steps)
        if self.store is not None:
            self.store.save(ACCOUNTANT_FILE, accountant_state(self.accountant))
        return {"dp_epsilon": self.epsilon(dp.delta), "dp_delta": dp.delta}


def _load_or_make_key(store: StateStore | None) -> bytes:
    """Return the client's key from its state dir, made and saved there the first time."""
    if store is None:
        return secrets.token_bytes(KEY_BYTES)  # this process's only
    saved = store.load(KEY_FILE).get("key")
    if saved is not None:
        if saved.dtype != np.uint8 or saved.shape != (KEY_BYTES,):
            raise ConfigError(f"the DP-SGD key in {store.path(KEY_FILE)} is not {KEY_BYTES} bytes")
        return saved.tobytes()
    key = secrets.token_bytes(KEY_BYTES)
    store.save(KEY_FILE, {"key": np.frombuffer(key, np.uint8)})
    return key


def _step(accountant: RDPAccountant, dp: DpSgd, sample_rate: float, steps: int) -> None:
    """Add `steps` steps of the subsampled Gaussian mechanism (merged into one run)."""
    for _ in range(steps):
        accountant.step(noise_multiplier=dp.noise_multiplier, sample_rate=sample_rate)
