"""Simulated byzantine clients, for experiments: the weights an attacker sends instead.

The experiment config's ``byzantine`` list holds attacks; the first whose ``clients``
selector contains this client's partition id applies (the same selectors as ``network``
profiles). The attack replaces the weights the client would send, after training:

- ``sign_flip``: ``global - scale * (trained - global)``, the client's update reversed and
  stretched (the sign-flipping attack of Li et al. 2019, https://arxiv.org/abs/1811.03761);
- ``gaussian``: ``global + N(0, std^2)``, noise in place of any training (the Gaussian
  byzantine vectors of Blanchard et al. 2017, https://arxiv.org/abs/1703.02757).

Only floating tensors are attacked; integer ones (BatchNorm's counters) are sent as
trained. The arithmetic is float64, cast back to each tensor's dtype. The noise is drawn
from a generator seeded with the experiment seed, the client's partition id and the round,
so a rerun sends bit-identical attacks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from client_worker.algorithms import RoundContext
from client_worker.algorithms.local_round import LocalUpdate
from client_worker.network import parse_clients
from shared.config import ByzantineProfile, GaussianAttack, SignFlipAttack

__all__ = [
    "attacked_update",
    "attacked_weights",
    "describe_attack",
    "gaussian_noise",
    "select_attack",
    "sign_flip",
]

Weights = dict[str, np.ndarray]

# The third entry of the seed sequence; client_worker.network uses 0 and 1 there.
_ATTACK_STREAM = 2


def select_attack(
    profiles: Sequence[ByzantineProfile], client_index: int
) -> ByzantineProfile | None:
    """Return the first attack whose selector contains `client_index`, else None (honest)."""
    for profile in profiles:
        ids = parse_clients(profile.clients, section="byzantine")
        if ids is None or client_index in ids:
            return profile
    return None


def sign_flip(
    global_weights: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray], *, scale: float
) -> Weights:
    """Return global - scale * (trained - global) for each floating tensor of `trained`."""
    out: Weights = {}
    for name, array in trained.items():
        if not _is_float(array):
            out[name] = array
            continue
        start = _global_of(global_weights, name, array).astype(np.float64)
        flipped = start - scale * (array.astype(np.float64) - start)
        out[name] = flipped.astype(array.dtype)
    return out


def gaussian_noise(
    global_weights: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    *,
    std: float,
    rng: np.random.Generator,
) -> Weights:
    """Return global + N(0, std^2) for each floating tensor of `trained`, in its order."""
    out: Weights = {}
    for name, array in trained.items():
        if not _is_float(array):
            out[name] = array
            continue
        start = _global_of(global_weights, name, array).astype(np.float64)
        noisy = start + std * rng.standard_normal(array.shape)
        out[name] = noisy.astype(array.dtype)
    return out


def attacked_weights(
    attack: ByzantineProfile,
    global_weights: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    *,
    seed: int,
    client_index: int,
    server_round: int,
) -> Weights:
    """Return what a byzantine client sends in `server_round` in place of `trained`."""
    if isinstance(attack, SignFlipAttack):
        return sign_flip(global_weights, trained, scale=attack.scale)
    rng = np.random.default_rng([seed, client_index, _ATTACK_STREAM, server_round])
    return gaussian_noise(global_weights, trained, std=attack.std, rng=rng)


def attacked_update(
    attack: ByzantineProfile | None,
    update: LocalUpdate,
    context: RoundContext,
    *,
    seed: int,
    client_index: int,
) -> LocalUpdate:
    """Return `update` with this client's simulated attack applied, if it has one."""
    if attack is None:
        return update
    weights = attacked_weights(
        attack,
        context.global_weights,
        update.weights,
        seed=seed,
        client_index=client_index,
        server_round=context.server_round,
    )
    return dataclasses.replace(update, weights=weights)


def describe_attack(attack: ByzantineProfile) -> str:
    """Return a one-line description for the log."""
    if isinstance(attack, GaussianAttack):
        return f"byzantine (simulated): gaussian noise, std {attack.std:g}"
    return f"byzantine (simulated): sign flip, scale {attack.scale:g}"


def _is_float(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.floating))


def _global_of(
    global_weights: Mapping[str, np.ndarray], name: str, array: np.ndarray
) -> np.ndarray:
    start = global_weights.get(name)
    if start is None or start.shape != array.shape:
        raise ValueError(f"tensor {name!r}: no global tensor of shape {array.shape} to attack from")
    return start
