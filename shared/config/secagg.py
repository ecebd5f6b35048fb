"""The experiment config's `secagg:` section: secure aggregation's parameters and their checks."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from shared.config.sections import Section
from shared.secagg.quantize import MODULUS, Quantizer, check_modulus

__all__ = ["SecAggConfig", "round_threshold"]


class SecAggConfig(Section):
    """Secure aggregation (SecAgg / SecAgg+): the aggregator learns only the round's sum."""

    enabled: bool = False
    # shares of a client's secrets needed to rebuild them; None: ceil(2/3) of its holders
    threshold: int | None = Field(None, ge=2)
    # SecAgg+: each client masks with this many others (even); None: with all (SecAgg)
    num_neighbours: int | None = Field(None, ge=2)
    clipping_range: float = Field(8.0, gt=0)  # each delta value is clipped to [-c, c]
    quantization_range: int = Field(1 << 22, ge=2, le=MODULUS)  # levels per value
    modulus: int = MODULUS  # the ring Z_m, m a power of two up to 2^32 (uint32 on the wire)
    # uniform: every client counts 1; num_examples: client i weighs n_i / max_num_examples
    weighting: Literal["uniform", "num_examples"] = "uniform"
    max_num_examples: int | None = Field(None, ge=1)
    stage_timeout_s: float = Field(30.0, gt=0)  # keys, shares and unmasking stages each

    @model_validator(mode="after")
    def _check(self) -> SecAggConfig:
        check_modulus(self.modulus)
        if self.quantization_range > self.modulus:
            raise ValueError(
                f"quantization_range ({self.quantization_range}) exceeds the modulus "
                f"({self.modulus}): a level must be a value of the ring"
            )
        if self.num_neighbours is not None and self.num_neighbours % 2:
            raise ValueError(
                f"num_neighbours ({self.num_neighbours}) must be even: each client links "
                "to num_neighbours / 2 on each side of a ring (SecAgg+)"
            )
        if self.weighting == "num_examples" and self.max_num_examples is None:
            raise ValueError(
                "weighting num_examples needs max_num_examples: each client multiplies its "
                "update by num_examples / max_num_examples, which must stay at most 1"
            )
        return self

    def holders(self, participants: int) -> int:
        """Return how many clients hold shares of one client's secrets (it included)."""
        if self.num_neighbours is None:
            return participants
        return min(self.num_neighbours, participants - 1) + 1

    def quantizer(self) -> Quantizer:
        """Return the fixed-point map of these options."""
        return Quantizer(self.clipping_range, self.quantization_range, self.modulus)

    def max_clients(self) -> int:
        """Return the most clients whose quantized values sum below the modulus."""
        return (self.modulus - 1) // (self.quantization_range - 1)


def round_threshold(config: SecAggConfig, participants: int) -> int:
    """Return a round's threshold t: the configured one, never at or below half the holders.

    Above half, honest clients (who reveal one of a neighbour's two secrets, never both)
    cannot give the aggregator t shares of both.
    """
    holders = config.holders(participants)
    wanted = config.threshold if config.threshold is not None else math.ceil(2 * holders / 3)
    return min(holders, max(wanted, holders // 2 + 1))
