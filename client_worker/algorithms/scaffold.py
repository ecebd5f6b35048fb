"""SCAFFOLD's client (Karimireddy et al. 2020, https://arxiv.org/abs/1910.06378), Algorithm 1.

Client i keeps its control variate c_i (zeros at first) across rounds and restarts. It
receives the model x and the server's c (group "server_control"; empty means c = 0), takes
K local steps with the corrected gradient g + c - c_i (line 10), then (line 12, option II)

    c_i+ = c_i - c + (x - y_i) / (K * lr)

and sends its weights y_i with dc_i = c_i+ - c_i (group "control_delta", line 13). c_i
becomes c_i+ only if the update is accepted: `AlgorithmSession` saves the state then and
rebuilds the algorithm from the saved state otherwise.

Each step is the optimizer's step on g, then y_i -= lr * (c - c_i): for plain SGD exactly
line 10's step on g + c - c_i. With momentum (`allow_momentum`, as NIID-Bench runs it) the
correction so stays out of the momentum buffer, at its nominal size, as in NIID-Bench's
code; option II's (x - y_i) / (K * lr) then over-reads the mean gradient, which is why
the experiment config refuses momentum by default. Weight decay is part of the objective.
The control variates span the floating tensors the update carries (shared/exchange.py);
those of buffers (BatchNorm's running statistics) take no gradient and correct nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from client_worker.algorithms.base import ClientAlgorithm, Groups, RoundContext, Weights
from client_worker.train import TrainResult
from shared.errors import ConfigError
from shared.exchange import exchanged_names, personalization

__all__ = ["CONTROL_DELTA", "SERVER_CONTROL", "Scaffold", "control_variate_update"]

SERVER_CONTROL = "server_control"  # published by the aggregator: c
CONTROL_DELTA = "control_delta"  # sent with the update: c_i+ - c_i


def control_variate_update(
    c_i: np.ndarray,
    c: np.ndarray,
    x: np.ndarray,
    y_i: np.ndarray,
    *,
    num_steps: int,
    lr: float,
) -> np.ndarray:
    """Return c_i+ = c_i - c + (x - y_i) / (K * lr) in float64 (Algorithm 1, option II)."""
    drift = np.asarray(x, np.float64) - np.asarray(y_i, np.float64)
    return np.asarray(c_i, np.float64) - np.asarray(c, np.float64) + drift / (num_steps * lr)


class Scaffold(ClientAlgorithm):
    """Corrects each step's gradient by c - c_i; sends the change of c_i with the update."""

    name = "scaffold"

    def __init__(self) -> None:
        self.control: Weights = {}  # c_i by tensor name, in the tensor's dtype; empty: zeros
        self._context: RoundContext | None = None
        self._server: Weights = {}  # this round's c
        self._corrections: list[tuple[nn.Parameter, torch.Tensor]] = []  # (p, lr * (c - c_i))
        self._delta: Weights = {}

    def before_training(self, model: nn.Module, context: RoundContext) -> None:
        """Read c and prepare the correction c - c_i of every parameter that trains."""
        state = model.state_dict()
        names = [n for n in _exchanged(model, context.config) if state[n].is_floating_point()]
        self._server = _server_control(context.groups.get(SERVER_CONTROL, {}), state, names)
        x = context.global_weights
        self.control = {n: self.control.get(n, np.zeros_like(x[n])) for n in names}
        params = dict(model.named_parameters())
        lr = float(context.config["lr"])
        self._corrections = [
            (params[n], torch.from_numpy(lr * (self._server[n] - self.control[n])).to(params[n]))
            for n in names
            if n in params
        ]
        self._context = context

    def after_step(self, model: nn.Module) -> None:
        """Take the correction step y_i -= lr * (c - c_i) after each optimizer step (line 10)."""
        with torch.no_grad():
            for param, correction in self._corrections:
                param.sub_(correction)

    def after_training(self, weights: Weights, result: TrainResult) -> Weights:
        """Compute c_i+ (option II) and dc_i; the round's copies are dropped."""
        if self._context is None:
            raise RuntimeError("after_training was called before before_training")
        lr = float(self._context.config["lr"])
        x = self._context.global_weights
        self._delta = {}
        for name, c_i in self.control.items():
            c_plus = control_variate_update(
                c_i, self._server[name], x[name], weights[name], num_steps=result.num_steps, lr=lr
            )
            self._delta[name] = (c_plus - c_i).astype(weights[name].dtype)
            self.control[name] = c_plus.astype(weights[name].dtype)
        self._context, self._server, self._corrections = None, {}, []
        return weights

    def groups_to_send(self) -> Groups:
        """Hand over dc_i = c_i+ - c_i (line 13)."""
        delta, self._delta = self._delta, {}
        return {CONTROL_DELTA: delta}

    def state_dict(self) -> Weights:
        """Return c_i."""
        return dict(self.control)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore c_i."""
        self.control = {name: np.array(value) for name, value in state.items()}


def _exchanged(model: nn.Module, config: Mapping[str, Any]) -> list[str]:
    """Return the names of the tensors the update carries, as the aggregator computes them."""
    local_layers, fedbn = personalization(config)
    trainable = tuple(config.get("trainable") or ())
    return exchanged_names(model, local_layers=local_layers, fedbn=fedbn, trainable=trainable)


def _server_control(
    published: Mapping[str, np.ndarray], state: Mapping[str, torch.Tensor], names: list[str]
) -> Weights:
    """Return c by tensor name in float64, zeros when the group is empty; check its tensors."""
    if not published:
        return {n: np.zeros(tuple(state[n].shape)) for n in names}
    if sorted(published) != sorted(names):
        missing = sorted(set(names) - set(published))
        extra = sorted(set(published) - set(names))
        raise ConfigError(
            f"the published {SERVER_CONTROL!r} does not fit this model: "
            f"missing {missing[:3]}, not in the update {extra[:3]}"
        )
    control = {n: np.asarray(published[n], np.float64) for n in names}
    for n in names:
        if control[n].shape != tuple(state[n].shape):
            raise ConfigError(
                f"the published {SERVER_CONTROL!r} tensor {n!r} has shape "
                f"{control[n].shape}, the model's {tuple(state[n].shape)}"
            )
    return control
