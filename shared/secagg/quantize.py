"""Fixed-point quantization of clipped updates into the ring Z_2^32, and back for a sum.

A value x is clipped to [-c, c] and mapped to a level in [0, q - 1] by
``(x + c) * (q - 1) / (2c)``, rounded stochastically (unbiased: up with probability the
fractional part) with a seeded generator, or to nearest without one. The sum of n levels
lies in [0, n(q - 1)], which must stay below the modulus m (a power of two, at most 2^32,
default 2^32) so the ring sum is the integer sum; dequantizing it removes the n offsets c.
Defaults follow Flower's SecAgg+.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_CLIPPING_RANGE",
    "DEFAULT_QUANTIZATION_RANGE",
    "MODULUS",
    "Quantizer",
    "check_modulus",
]

DEFAULT_CLIPPING_RANGE = 8.0
DEFAULT_QUANTIZATION_RANGE = 1 << 22
MODULUS = 1 << 32  # the default and largest modulus: masked vectors are uint32


def check_modulus(modulus: int) -> None:
    """Raise ValueError unless `modulus` is a power of two in [2, 2^32]."""
    if not 2 <= modulus <= MODULUS or modulus & (modulus - 1):
        raise ValueError(f"the modulus must be a power of two in [2, 2^32], got {modulus}")


@dataclass(frozen=True)
class Quantizer:
    """Maps floats in [-clipping_range, clipping_range] to quantization_range levels."""

    clipping_range: float = DEFAULT_CLIPPING_RANGE
    quantization_range: int = DEFAULT_QUANTIZATION_RANGE
    modulus: int = MODULUS

    def __post_init__(self) -> None:
        if not self.clipping_range > 0:
            raise ValueError(f"clipping_range must be positive, got {self.clipping_range}")
        check_modulus(self.modulus)
        if not 2 <= self.quantization_range <= self.modulus:
            raise ValueError(
                f"quantization_range must be in [2, modulus {self.modulus}], got "
                f"{self.quantization_range}"
            )

    @property
    def scale(self) -> float:
        """Levels per unit: (q - 1) / (2c)."""
        return (self.quantization_range - 1) / (2.0 * self.clipping_range)

    def max_summands(self) -> int:
        """Return the most values whose levels sum below the modulus."""
        return (self.modulus - 1) // (self.quantization_range - 1)

    def check_summands(self, count: int) -> None:
        """Raise ValueError unless `count` quantized values sum without wrapping."""
        if count > self.max_summands():
            raise ValueError(
                f"{count} values of {self.quantization_range} levels can reach "
                f"{count * (self.quantization_range - 1)}, past the modulus {self.modulus}; at "
                f"most {self.max_summands()} clients per round with this quantization_range"
            )

    def quantize(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Return the uint32 levels of `values` (clipped); stochastic rounding with `rng`."""
        c = self.clipping_range
        scaled = (np.clip(values.astype(np.float64), -c, c) + c) * self.scale
        noise = rng.random(scaled.shape) if rng is not None else None
        levels = np.rint(scaled) if noise is None else np.floor(scaled + noise)
        top = float(self.quantization_range - 1)
        return np.clip(levels, 0.0, top).astype(np.uint32)

    def dequantize_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """Return the float64 sum of `count` values from the (unwrapped) sum of their levels."""
        self.check_summands(count)
        return total.astype(np.float64) / self.scale - count * self.clipping_range
