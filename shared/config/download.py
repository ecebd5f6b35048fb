"""The experiment config's download_compression section: the global model sent as deltas.

Absent (the default), GET /get_weights answers full weights as always. Present, the
aggregator defines each new global model as the previous one plus the encoded step
between them (the chain, docs/protocol.md *Download deltas*) and answers a worker that
names a version it holds with the steps since, encoded as this section says; it keeps
the steps of the last `keep_versions` versions. The codec is checked by `CompressionSpec`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from shared.compression import CompressionSpec
from shared.config.compression import CODEC_KEYS
from shared.config.sections import Section

__all__ = ["DownloadCompressionConfig"]

MAX_KEPT_VERSIONS = 16


class DownloadCompressionConfig(Section):
    """An encoding for the global model's steps and how many versions the aggregator keeps."""

    # lossy encodings only: a sparse step would drop most of each round's update for good
    encoding: Literal["q8", "q4", "f16", "bf16"]
    block_size: int = 256
    scheme: str = "absmax"
    rounding: str = "nearest"
    min_elements: int = 1024
    uncompressed: list[str] = Field(default_factory=list)
    keep_versions: int = Field(3, ge=1, le=MAX_KEPT_VERSIONS)

    @model_validator(mode="after")
    def _check_codec(self) -> DownloadCompressionConfig:
        self.spec()  # raises the codec's ConfigError, which names the key
        return self

    def spec(self) -> CompressionSpec:
        """Return the codec's spec, built from the keys the config sets."""
        return CompressionSpec.from_mapping(self.codec_settings())

    def codec_settings(self) -> dict[str, Any]:
        """Return the codec keys the config sets (the others keep the codec's defaults)."""
        keys = (self.model_fields_set | {"encoding"}) & CODEC_KEYS
        return {key: getattr(self, key) for key in sorted(keys)}

    def announced(self) -> dict[str, Any]:
        """Return the section as the round config announces it to the workers."""
        return {**self.codec_settings(), "keep_versions": self.keep_versions}
