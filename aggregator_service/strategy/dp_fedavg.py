"""DP-FedAvg (McMahan et al. 2018, https://arxiv.org/abs/1710.06963), Algorithm 1, uniform weights.

Each client's delta Delta_i = y_i - x over the floating tensors, all of them together, is
clipped to L2 norm C; the server adds N(0, (z C)^2) to every coordinate of the SUM of the
clipped deltas and divides by m, the number of clients a round selects (the fixed
denominator, so one client moves the mean by at most C/m however many report; a round with
more reports, a retried one, divides by their count). Then x <- x + server_lr * mean.

With `target_quantile` gamma the clip norm adapts (Andrew et al. 2021,
https://arxiv.org/abs/1905.03871, Algorithm 1): each client's bit b_i = [||Delta_i|| <= C]
is summed with noise N(0, sigma_b^2), b = that sum / m, and C <- C * exp(-clip_lr * (b -
gamma)). The update's noise multiplier is then z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2, so
that the two releases together cost what one of multiplier z does. C is saved in every
checkpoint.

`clipping: server` is the trusted-server variant: the strategy clips. `clipping: client`:
each client clips its own delta to C (the round config's `clip_norm`) and sends b_i in the
group "clip_bits"; `check_update` refuses, at ingest, a delta over C * (1 + CLIP_TOLERANCE),
and the sum is still clipped here (a no-op for honest clients; it keeps the sensitivity C).
Only client clipping works from the sum alone (`aggregate_sum`, secure aggregation).

The noise comes from ChaCha20 (randomgen) keyed with 256 bits: SHA-256 of (noise_seed,
server_round) when `noise_seed` is set, fresh OS entropy each round otherwise. It is drawn
tensor by tensor in the model's order, then the clipped-count noise. Integer and bool
tensors take the mean rule's element-wise maximum (the sum's path keeps them as they are).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from randomgen import ChaCha

from aggregator_service.strategy.base import (
    AggregationError,
    BaseStrategy,
    ClientUpdate,
    SummedDeltas,
)
from aggregator_service.strategy.mean import is_floating
from shared.errors import ConfigError, InvalidUpdate
from shared.privacy.clipping import CLIP_BITS, CLIP_TOLERANCE, UNCLIPPED, clip_factor, l2_norm
from shared.privacy.noise import update_noise_multiplier
from shared.wire import TensorSpec

__all__ = [
    "CLIP_BITS",
    "CLIP_TOLERANCE",
    "UNCLIPPED",
    "DPFedAvg",
    "adapted_clip_norm",
    "clip_factor",
    "l2_norm",
    "noise_generator",
]

_STATE_CLIP = "clip_norm"


def adapted_clip_norm(
    clip_norm: float, unclipped_fraction: float, *, target_quantile: float, clip_lr: float
) -> float:
    """Return C * exp(-eta_C * (b - gamma)), the geometric update of Andrew et al. 2021."""
    return clip_norm * math.exp(-clip_lr * (unclipped_fraction - target_quantile))


def noise_generator(noise_seed: int | None, server_round: int) -> np.random.Generator:
    """Return ChaCha20 keyed by SHA-256 of (noise_seed, round), or by 256 fresh OS bits."""
    if noise_seed is None:
        key = secrets.randbits(256)
    else:
        text = f"tributary/dpfedavg-noise/{noise_seed}/{server_round}".encode()
        key = int.from_bytes(hashlib.sha256(text).digest(), "big")
    return np.random.Generator(ChaCha(key=key, rounds=20))


class DPFedAvg(BaseStrategy):
    """Clip each delta to C, add Gaussian noise to their sum, step by the sum / m."""

    name: ClassVar[str] = "dpfedavg"

    def __init__(
        self,
        *,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        clipping: Literal["server", "client"] = "server",
        target_quantile: float | None = None,
        clip_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        server_lr: float = 1.0,
        noise_seed: int | None = None,
        num_clients: int | None = None,
        clients_per_round: int | None = None,
        target_epsilon: float | None = None,
        delta: float = 1e-5,
        accountant: str = "rdp",
    ) -> None:
        if clients_per_round is None or clients_per_round < 1:
            raise ConfigError(
                f"dpfedavg needs clients_per_round, the m clients a round selects; "
                f"got {clients_per_round!r}"
            )
        self.clip_norm = clip_norm  # C of the round being trained
        self.noise_multiplier = noise_multiplier
        self.clipping = clipping
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self.count_stddev = clipped_count_stddev or clients_per_round / 20
        self.server_lr = server_lr
        self.noise_seed = noise_seed
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        # the run's accountant (federation/privacy.py) reads these; the rule does not
        self.target_epsilon, self.delta, self.accountant = target_epsilon, delta, accountant
        adaptive = target_quantile is not None
        z = noise_multiplier
        self.update_noise = update_noise_multiplier(z, self.count_stddev) if adaptive else z

    @property
    def adaptive(self) -> bool:
        """Whether C follows the target quantile of the deltas' norms."""
        return self.target_quantile is not None

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        """Return x + server_lr * (sum of clipped deltas + noise) / m."""
        floating = [name for name, x in current.items() if is_floating(x.dtype)]
        sums = {name: np.zeros(current[name].shape) for name in floating}
        maxima: dict[str, np.ndarray] = {}
        count, unclipped = 0, 0.0
        for update in updates:
            delta = {n: np.asarray(update.weights[n], np.float64) - current[n] for n in floating}
            norm = l2_norm(delta)
            scale = clip_factor(norm, self.clip_norm)
            for name in floating:
                sums[name] += delta[name] * scale
            for name in current.keys() - sums.keys():  # integer and bool: the maximum
                weights = update.weights[name]
                maxima[name] = np.maximum(maxima.get(name, weights), weights)
            unclipped += self._bit(update, norm)
            count += 1
        if count == 0:
            raise AggregationError(f"round {server_round}: no update to aggregate")
        return self._step(server_round, current, sums, maxima, count, unclipped)

    def aggregate_sum(
        self, server_round: int, current: Mapping[str, np.ndarray], summed: SummedDeltas
    ) -> dict[str, np.ndarray]:
        """Return the same step from the sum of client-clipped deltas (secure aggregation)."""
        if self.clipping != "client":
            raise AggregationError(
                "dpfedavg with clipping: server clips each update, which secure aggregation "
                "hides from the aggregator; use clipping: client"
            )
        if summed.num_clients < 1:
            raise AggregationError(f"round {server_round}: no update to aggregate")
        if summed.total_weight != summed.num_clients:
            raise AggregationError(
                f"round {server_round}: dpfedavg weighs every client 1, but the sum's total "
                f"weight is {summed.total_weight} for {summed.num_clients} clients"
            )
        floating = [name for name, x in current.items() if is_floating(x.dtype)]
        if missing := sorted(set(floating) - set(summed.delta_sum)):
            raise AggregationError(f"round {server_round}: the sum lacks the tensors {missing}")
        sums = {name: np.asarray(summed.delta_sum[name], np.float64) for name in floating}
        kept = {name: current[name] for name in current.keys() - sums.keys()}
        bits = summed.group_sums.get(CLIP_BITS, {}).get(UNCLIPPED) if self.adaptive else None
        if self.adaptive and bits is None:
            raise AggregationError(f"round {server_round}: the sum lacks the group {CLIP_BITS!r}")
        unclipped = float(np.asarray(bits)) if bits is not None else 0.0
        return self._step(server_round, current, sums, kept, summed.num_clients, unclipped)

    def _step(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        sums: dict[str, np.ndarray],
        others: Mapping[str, np.ndarray],
        count: int,
        unclipped: float,
    ) -> dict[str, np.ndarray]:
        """Add the noise to the sums, take the step, and adapt C (Algorithm 1's server part)."""
        rng = noise_generator(self.noise_seed, server_round)
        std = self.update_noise * self.clip_norm
        denominator = max(self.clients_per_round, count)
        result: dict[str, np.ndarray] = {}
        for name, x in current.items():
            if name not in sums:
                result[name] = np.asarray(others[name], x.dtype)
                continue
            noised = sums[name] + std * rng.standard_normal(x.shape)
            result[name] = (x + self.server_lr * noised / denominator).astype(x.dtype)
        if self.adaptive:
            assert self.target_quantile is not None
            noisy_count = unclipped + rng.normal(0.0, self.count_stddev)
            self.clip_norm = adapted_clip_norm(
                self.clip_norm,
                noisy_count / denominator,
                target_quantile=self.target_quantile,
                clip_lr=self.clip_lr,
            )
        return result

    def _bit(self, update: ClientUpdate, norm: float) -> float:
        """Return b_i: the client's own under client clipping, else [||Delta_i|| <= C]."""
        if self.clipping == "client" and self.adaptive:
            return float(np.asarray(update.groups[CLIP_BITS][UNCLIPPED]))
        return float(norm <= self.clip_norm)

    def check_update(self, current: Mapping[str, np.ndarray], update: ClientUpdate) -> None:
        """Refuse a client-clipped delta over C (with tolerance) or a bit other than 0 or 1."""
        if self.clipping != "client":
            return
        floating = [name for name, x in current.items() if is_floating(x.dtype)]
        norm = l2_norm(
            {n: np.asarray(update.weights[n], np.float64) - current[n] for n in floating}
        )
        if norm > self.clip_norm * (1 + CLIP_TOLERANCE):
            raise InvalidUpdate(
                "norm_over_clip",
                f"the update's delta (weights minus the global model) has L2 norm {norm:.6g}, "
                f"above this round's clip norm C={self.clip_norm:.6g} (tolerance "
                f"{CLIP_TOLERANCE:g}); clip it to clip_norm of the round config",
            )
        if self.adaptive:
            bit = float(np.asarray(update.groups[CLIP_BITS][UNCLIPPED]))
            if bit not in (0.0, 1.0):
                raise InvalidUpdate(
                    "invalid_update", f"group {CLIP_BITS!r}: {UNCLIPPED} must be 0 or 1, got {bit}"
                )

    def client_config(self) -> dict[str, Any]:
        """Under client clipping, send this round's C as the round config's clip_norm."""
        return {"clip_norm": self.clip_norm} if self.clipping == "client" else {}

    def update_groups(self, model: Mapping[str, TensorSpec]) -> dict[str, dict[str, TensorSpec]]:
        """Under client clipping with adaptive C, every update carries its bit b_i."""
        if self.clipping == "client" and self.adaptive:
            return {CLIP_BITS: {UNCLIPPED: TensorSpec((), "float32")}}
        return {}

    def state(self) -> dict[str, np.ndarray]:
        """Return C, the clip norm of the next round."""
        return {_STATE_CLIP: np.array(self.clip_norm, np.float64)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore C (a checkpoint without it, the one of round 0, keeps the configured C)."""
        if _STATE_CLIP in state:
            self.clip_norm = float(state[_STATE_CLIP])
