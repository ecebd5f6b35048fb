"""The experiment config's compression section: updates sent as encoded deltas.

Absent (the default), updates carry full weights as always. Present, every worker sends
trained - global of each floating tensor, float32 ones encoded as `CompressionSpec` says
(shared/compression), with error feedback where `error_feedback` asks for it; the
aggregator announces the section in every round config, so the workers use the
aggregator's settings. The codec parameters are checked by `CompressionSpec` alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from shared.compression import CompressionSpec
from shared.config.sections import Section

__all__ = ["CODEC_KEYS", "CompressionConfig"]

_DEFAULTS: dict[str, Any] = {
    field.name: field.default for field in dataclasses.fields(CompressionSpec)
}
CODEC_KEYS = frozenset(_DEFAULTS)  # the keys CompressionSpec takes


class CompressionConfig(Section):
    """An encoding for the updates' deltas, its parameters, and error feedback."""

    encoding: str  # f16, bf16, q8, q4 or topk
    block_size: int = _DEFAULTS["block_size"]
    scheme: str = _DEFAULTS["scheme"]
    rounding: str = _DEFAULTS["rounding"]
    fraction: float = _DEFAULTS["fraction"]
    values: str = _DEFAULTS["values"]
    min_elements: int = _DEFAULTS["min_elements"]
    uncompressed: list[str] = Field(default_factory=list)
    # keep what the encoding dropped and add it to the next delta; None: on for topk only
    error_feedback: bool | None = None

    @model_validator(mode="after")
    def _check_codec(self) -> CompressionConfig:
        self.spec()  # raises the codec's ConfigError, which names the key
        return self

    def spec(self) -> CompressionSpec:
        """Return the codec's spec, built from the keys the config sets."""
        return CompressionSpec.from_mapping(self.codec_settings())

    def codec_settings(self) -> dict[str, Any]:
        """Return the codec keys the config sets (the others keep the codec's defaults)."""
        return {key: getattr(self, key) for key in sorted(self.model_fields_set & CODEC_KEYS)}

    def uses_error_feedback(self) -> bool:
        """Tell whether workers keep residuals: as set, else for topk only."""
        if self.error_feedback is not None:
            return self.error_feedback
        return self.encoding == "topk"

    def announced(self) -> dict[str, Any]:
        """Return the section as the round config announces it to the workers."""
        return {**self.codec_settings(), "error_feedback": self.uses_error_feedback()}

    @classmethod
    def from_round_config(cls, config: Mapping[str, Any]) -> CompressionConfig | None:
        """Return the section a round config announces; None when updates go uncompressed."""
        section = config.get("compression")
        return None if section is None else cls.model_validate(section)
