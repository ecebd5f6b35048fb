"""The experiment config's `dp_sgd` section: sample-level DP-SGD on every client.

Each client clips every example's gradient to `max_grad_norm` (C) and adds Gaussian noise
of std `noise_multiplier * C` (sigma * C) to the sum of a Poisson-sampled batch (Abadi et
al. 2016, https://arxiv.org/abs/1607.00133); its own RDP accountant turns the steps it
took into (epsilon, `delta`) for the examples of its partition (docs/privacy.md,
"Sample-level DP-SGD").
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from shared.config.sections import Section

__all__ = ["DpSgdConfig"]


class DpSgdConfig(Section):
    """Per-sample clipping and noise in local training, and each client's privacy budget."""

    noise_multiplier: float = Field(ge=0)  # sigma: the noise std is sigma * max_grad_norm
    max_grad_norm: float | None = Field(None, gt=0)  # C: each example's gradient L2 clip
    # the delta of the (epsilon, delta) each client reports; a client with 1/delta examples
    # or fewer refuses to train, as the guarantee says nothing then
    delta: float = Field(1e-5, gt=0, lt=1)
    # a client declines the round that would take its epsilon past this (None: no budget)
    target_epsilon: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_mechanism(self) -> DpSgdConfig:
        if self.max_grad_norm is None:
            raise ValueError(
                "dp_sgd.max_grad_norm is required: without a clip an example's gradient, "
                "and so what the noise must hide, is unbounded (no privacy guarantee)"
            )
        if self.noise_multiplier == 0 and self.target_epsilon is not None:
            raise ValueError(
                f"dp_sgd.target_epsilon ({self.target_epsilon}) cannot be met with "
                "noise_multiplier 0: clipping alone gives epsilon = infinity"
            )
        return self

    def round_config(self) -> dict[str, Any]:
        """Return what the clients need of it, for the round config."""
        return self.model_dump()
