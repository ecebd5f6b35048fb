"""Clipping a delta to L2 norm C, all its tensors together: the one rule clients and server use."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["CLIP_BITS", "CLIP_TOLERANCE", "UNCLIPPED", "clip_factor", "l2_norm"]

CLIP_BITS = "clip_bits"  # the update group of client clipping with adaptive C
UNCLIPPED = "unclipped"  # its one tensor: b_i = [||Delta_i|| <= C], a float32 scalar 0 or 1
CLIP_TOLERANCE = 1e-3  # relative: a client-clipped delta sent as float32 may round above C


def l2_norm(delta: Mapping[str, np.ndarray]) -> float:
    """Return the L2 norm of all tensors of `delta` together, in float64."""
    return math.sqrt(sum(float(np.vdot(d, d)) for d in delta.values()))


def clip_factor(norm: float, clip_norm: float) -> float:
    """Return min(1, C / ||Delta||): what clipping to C multiplies a delta by."""
    return 1.0 if norm <= clip_norm else clip_norm / norm
