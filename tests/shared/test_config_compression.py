"""The experiment config's compression section: validation, refusals, the round config."""

from __future__ import annotations

from typing import Any

import pytest

from shared.compression import CompressionSpec
from shared.config import CompressionConfig, load_config
from shared.errors import ConfigError

TOPK = {"encoding": "topk", "fraction": 0.1, "values": "q8"}


def test_absent_compression_leaves_the_round_config_as_it_was() -> None:
    config = load_config(None)
    assert config.compression is None
    assert "compression" not in config.round_config()


def test_the_round_config_announces_the_section_with_error_feedback_resolved() -> None:
    config = load_config(None, {"compression": TOPK})
    assert config.round_config()["compression"] == {**TOPK, "error_feedback": True}
    assert config.compression is not None
    assert config.compression.spec() == CompressionSpec(encoding="topk", fraction=0.1, values="q8")
    q8 = load_config(None, {"compression": {"encoding": "q8", "error_feedback": True}})
    assert q8.round_config()["compression"] == {"encoding": "q8", "error_feedback": True}
    assert load_config(None, {"compression": {"encoding": "q4"}}).round_config()["compression"] == {
        "encoding": "q4",
        "error_feedback": False,
    }


def test_a_worker_reads_back_what_the_round_config_announces() -> None:
    announced = load_config(None, {"compression": TOPK}).round_config()
    section = CompressionConfig.from_round_config(announced)
    assert section is not None
    assert section.spec() == CompressionSpec(encoding="topk", fraction=0.1, values="q8")
    assert section.uses_error_feedback()
    assert CompressionConfig.from_round_config({"model": "mlp"}) is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"encoding": "zip"}, "compression.encoding must be one of f16, bf16, q8, q4, topk"),
        ({"fraction": 0.1}, "compression.encoding: Field required"),
        ({"encoding": "topk", "fraction": 0}, "compression.fraction must be a number in (0, 1]"),
        ({"encoding": "f16", "block_size": 64}, "block_size does not apply to encoding 'f16'"),
        ({"encoding": "q8", "block_size": 32}, "compression.block_size must be an int from 64"),
        ({"encoding": "q8", "levels": 3}, "unknown key 'compression.levels'"),
    ],
)
def test_invalid_sections_are_refused_by_name(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, {"compression": section})


ROUNDS_OF_3 = {"min_fit_clients": 3, "min_available_clients": 3}


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum"])
@pytest.mark.parametrize(
    ("section", "why"),
    [(TOPK, "sparse (every coordinate not sent is zero-filled)"), ({"encoding": "q8"}, "lossy")],
)
def test_byzantine_robust_rules_refuse_compression_and_say_why(
    strategy: str, section: dict[str, Any], why: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, {"compression": section, "strategy": strategy, **ROUNDS_OF_3})
    message = str(refused.value)
    assert f"cannot be used with strategy {strategy!r}" in message
    assert why in message
    assert "honest clients' full updates" in message


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedavgm", "fedadam", "scaffold"])
def test_rules_that_rebuild_global_plus_delta_take_any_encoding(strategy: str) -> None:
    config = load_config(None, {"compression": TOPK, "strategy": strategy})
    assert config.round_config()["compression"]["encoding"] == "topk"


DP_FEDAVG = {
    "num_partitions": 100,
    "fraction_fit": 0.5,
    "min_available_clients": 100,
    "min_fit_clients": 50,
    "close_at_threshold": False,
}


@pytest.mark.parametrize("section", [TOPK, {"encoding": "q8"}, {"encoding": "f16"}])
def test_dp_fedavg_with_client_clipping_refuses_compression(section: dict[str, Any]) -> None:
    strategy = {"name": "dpfedavg", "clip_norm": 0.5, "noise_multiplier": 1.0}
    client = {**DP_FEDAVG, "compression": section, "strategy": {**strategy, "clipping": "client"}}
    with pytest.raises(ConfigError, match="norm past clip_norm"):
        load_config(None, client)
    server = {**client, "strategy": {**strategy, "clipping": "server"}}
    assert load_config(None, server).compression is not None  # the server clips what it decoded


def test_secure_aggregation_refuses_compression() -> None:
    with pytest.raises(ConfigError, match="cannot be used with secure aggregation"):
        load_config(None, {"compression": {"encoding": "q8"}, "secagg": {"enabled": True}})
