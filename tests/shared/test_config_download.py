"""The experiment config's download_compression section: validation and the round config."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.compression import CompressionSpec
from shared.config import load_config
from shared.errors import ConfigError


def test_absent_download_compression_leaves_the_round_config_as_it_was() -> None:
    config = load_config(None)
    assert config.download_compression is None
    assert "download_compression" not in config.round_config()


def test_the_round_config_announces_the_codec_keys_set_and_the_kept_versions() -> None:
    section = {"encoding": "q8", "block_size": 128}
    config = load_config(None, {"download_compression": section})
    assert config.round_config()["download_compression"] == {**section, "keep_versions": 3}
    assert config.download_compression is not None
    assert config.download_compression.spec() == CompressionSpec(encoding="q8", block_size=128)


@pytest.mark.parametrize(
    "section",
    [
        {"encoding": "topk"},  # sparse steps would drop most of each update for good
        {"encoding": "q8", "keep_versions": 0},
        {"encoding": "q8", "keep_versions": 17},
        {"encoding": "f16", "block_size": 128},  # f16 has no blocks
        {"encoding": "q8", "fraction": 0.1},
        {},
    ],
)
def test_bad_sections_are_refused(section: dict[str, Any]) -> None:
    with pytest.raises((ConfigError, ValidationError, ValueError)):
        load_config(None, {"download_compression": section})
