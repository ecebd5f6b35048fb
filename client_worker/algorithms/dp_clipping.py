"""DP-FedAvg's client under `clipping: client`: clip the round's delta to C before sending.

The client trains as usual, then clips its delta Delta = y - x over the floating tensors
the update carries, all of them together, to the round config's `clip_norm` C (McMahan
et al. 2018, Algorithm 1, ClipFn) and sends x + Delta * min(1, C / ||Delta||). When the
round config asks for the group "clip_bits" (adaptive clipping, Andrew et al. 2021) it
sends b = [||Delta|| <= C] as its one float32 scalar "unclipped". The aggregator checks the
norm of what arrives and adds the noise; a client never adds noise of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from client_worker.algorithms.base import ClientAlgorithm, Groups, RoundContext, Weights
from client_worker.train import TrainResult
from shared.errors import ConfigError
from shared.exchange import exchanged_names, personalization
from shared.privacy.clipping import CLIP_BITS, UNCLIPPED, clip_factor, l2_norm

__all__ = ["ClientClipping", "clip_delta"]


def clip_delta(
    weights: Weights, global_weights: Mapping[str, np.ndarray], names: list[str], clip_norm: float
) -> tuple[Weights, float]:
    """Return the weights with their delta on `names` clipped to `clip_norm`, and its norm."""
    delta = {n: np.asarray(weights[n], np.float64) - global_weights[n] for n in names}
    norm = l2_norm(delta)
    scale = clip_factor(norm, clip_norm)
    clipped = dict(weights)
    for name in names:
        step = global_weights[name] + delta[name] * scale
        clipped[name] = step.astype(weights[name].dtype)
    return clipped, norm


class ClientClipping(ClientAlgorithm):
    """Trains as FedAvg's client; clips the delta to the round's C; reports whether it did."""

    name = "dpfedavg"

    def __init__(self) -> None:
        self._context: RoundContext | None = None
        self._names: list[str] = []
        self._bits: Groups = {}

    def before_training(self, model: nn.Module, context: RoundContext) -> None:
        """Note the round's C and the floating tensors the update carries."""
        self._context = context
        self._names = _exchanged_floating(model, context.config)
        self._bits = {}

    def after_training(self, weights: Weights, result: TrainResult) -> Weights:
        """Return the trained weights with their delta clipped to C."""
        if self._context is None:
            raise RuntimeError("after_training was called before before_training")
        clip_norm = _clip_norm(self._context.config)
        clipped, norm = clip_delta(weights, self._context.global_weights, self._names, clip_norm)
        if CLIP_BITS in self._context.update_groups:
            self._bits = {CLIP_BITS: {UNCLIPPED: np.array(float(norm <= clip_norm), np.float32)}}
        self._context = None
        return clipped

    def groups_to_send(self) -> Groups:
        """Hand over b = [||Delta|| <= C] when the round asks for it."""
        bits, self._bits = self._bits, {}
        return bits


def _exchanged_floating(model: nn.Module, config: Mapping[str, Any]) -> list[str]:
    """Return the floating tensors the update carries, as the aggregator computes them."""
    local_layers, fedbn = personalization(config)
    trainable = tuple(config.get("trainable") or ())
    names = exchanged_names(model, local_layers=local_layers, fedbn=fedbn, trainable=trainable)
    state = model.state_dict()
    return [name for name in names if state[name].is_floating_point()]


def _clip_norm(config: Mapping[str, Any]) -> float:
    """Return the round config's clip_norm, refusing anything but a finite number > 0."""
    value = config.get("clip_norm")
    clip_norm = float("nan")
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            clip_norm = float(value)
    if not 0 < clip_norm < float("inf"):
        raise ConfigError(f"the round config's clip_norm {value!r} is not a finite number > 0")
    return clip_norm
