"""CompressionSpec, how an update's float32 tensors are encoded, and which stay uncompressed.

`plan` decides per tensor: integer, bool and non-float32 tensors, tensors of fewer than
`min_elements` elements, and tensors whose name matches one of the fnmatch patterns in
`uncompressed` (case-sensitive, e.g. "*.bias", "*bn*") go as plain tensor maps; every
other tensor is encoded with `encoding`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from shared.compression.blockwise import MAX_BLOCK, MIN_BLOCK, ROUNDINGS, SCHEMES
from shared.compression.topk import VALUES
from shared.errors import ConfigError
from shared.wire_tensors import TensorSpec

__all__ = ["ENCODINGS", "CompressionSpec", "plan"]

ENCODINGS = ("f16", "bf16", "q8", "q4", "topk")


@dataclass(frozen=True, kw_only=True)
class CompressionSpec:
    """An encoding and its parameters; each parameter applies to the encodings noted."""

    encoding: str  # f16, bf16, q8, q4 or topk
    block_size: int = 256  # q8, q4, topk with q8 values: elements per scale (64 to 4096)
    scheme: str = "absmax"  # q8, q4, topk with q8 values: absmax (signed) or minmax (affine)
    rounding: str = "nearest"  # q8, q4, topk with q8 values: nearest or stochastic (unbiased)
    fraction: float = 0.01  # topk: k = max(1, round(fraction * size)) elements sent
    values: str = "float32"  # topk: the values as float32 or q8
    min_elements: int = 1024  # any: tensors with fewer elements stay uncompressed
    uncompressed: tuple[str, ...] = ()  # any: fnmatch patterns of names left uncompressed

    def __post_init__(self) -> None:
        _choice("encoding", self.encoding, ENCODINGS)
        _int("block_size", self.block_size, MIN_BLOCK, MAX_BLOCK)
        _choice("scheme", self.scheme, SCHEMES)
        _choice("rounding", self.rounding, ROUNDINGS)
        fraction = self.fraction
        if type(fraction) not in (int, float) or not 0 < fraction <= 1:
            raise ConfigError(f"compression.fraction must be a number in (0, 1], got {fraction!r}")
        _choice("values", self.values, VALUES)
        _int("min_elements", self.min_elements, 0, 2**63 - 1)
        patterns = self.uncompressed
        if isinstance(patterns, list):  # as a config file gives it
            patterns = tuple(patterns)
            object.__setattr__(self, "uncompressed", patterns)
        if not isinstance(patterns, tuple) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"compression.uncompressed must be a list of str, got {patterns!r}")
        for field in dataclasses.fields(self):
            if field.name not in self.applies() and getattr(self, field.name) != field.default:
                raise ConfigError(
                    f"compression.{field.name} does not apply to encoding {self.encoding!r}"
                )

    def applies(self) -> frozenset[str]:
        """Return the names of the parameters this encoding uses."""
        quantized = self.encoding in ("q8", "q4") or (
            self.encoding == "topk" and self.values == "q8"
        )
        return frozenset(
            {"encoding", "min_elements", "uncompressed"}
            | ({"block_size", "scheme", "rounding"} if quantized else set())
            | ({"fraction", "values"} if self.encoding == "topk" else set())
        )

    @classmethod
    def from_mapping(cls, obj: Mapping[str, Any]) -> CompressionSpec:
        """Build a spec from a config mapping, refusing unknown keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in obj if key not in known)
        if unknown:
            raise ConfigError(f"compression has unknown key {unknown[0]!r}")
        if "encoding" not in obj:
            raise ConfigError(f"compression.encoding is missing (one of {', '.join(ENCODINGS)})")
        return cls(**obj)


def plan(
    specs: Mapping[str, TensorSpec], compression: CompressionSpec | None
) -> dict[str, str | None]:
    """Return each tensor's encoding, or None where it stays uncompressed."""
    return {name: _encoding(name, spec, compression) for name, spec in specs.items()}


def _encoding(name: str, spec: TensorSpec, compression: CompressionSpec | None) -> str | None:
    if compression is None or spec.dtype != "float32":
        return None
    if math.prod(spec.shape) < compression.min_elements:
        return None
    if any(fnmatchcase(name, pattern) for pattern in compression.uncompressed):
        return None
    return compression.encoding


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"compression.{key} must be one of {', '.join(choices)}; got {value!r}")


def _int(key: str, value: Any, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"compression.{key} must be an int from {low} to {high}; got {value!r}")
