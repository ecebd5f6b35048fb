"""CompressionSpec's validation and the plan of which tensors stay uncompressed."""

from __future__ import annotations

from typing import Any

import pytest

from shared.compression import CompressionSpec, plan
from shared.errors import ConfigError
from shared.wire_tensors import TensorSpec


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"encoding": "zip"}, "encoding must be one of f16, bf16, q8, q4, topk; got 'zip'"),
        ({"encoding": "q8", "block_size": 32}, "block_size must be an int from 64 to 4096; got 32"),
        ({"encoding": "q8", "block_size": 256.0}, "block_size must be an int"),
        ({"encoding": "q8", "scheme": "abs"}, "scheme must be one of absmax, minmax"),
        ({"encoding": "q4", "rounding": "up"}, "rounding must be one of nearest, stochastic"),
        ({"encoding": "topk", "fraction": 0}, "fraction must be a number in \\(0, 1\\]"),
        ({"encoding": "topk", "fraction": 1.5}, "fraction must be a number"),
        ({"encoding": "topk", "fraction": True}, "fraction must be a number"),
        ({"encoding": "topk", "values": "q4"}, "values must be one of float32, q8"),
        ({"encoding": "f16", "min_elements": -1}, "min_elements must be an int"),
        ({"encoding": "f16", "uncompressed": "*.bias"}, "uncompressed must be a list of str"),
        ({"encoding": "f16", "uncompressed": [1]}, "uncompressed must be a list of str"),
        ({"encoding": "f16", "block_size": 128}, "block_size does not apply to encoding 'f16'"),
        ({"encoding": "q8", "fraction": 0.1}, "fraction does not apply to encoding 'q8'"),
        ({"encoding": "topk", "rounding": "stochastic"}, "rounding does not apply to encoding"),
    ],
)
def test_invalid_specs_say_what_is_wrong(params: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        CompressionSpec(**params)


def test_valid_specs() -> None:
    spec = CompressionSpec(encoding="topk", values="q8", block_size=64, rounding="stochastic")
    assert spec.applies() >= {"fraction", "values", "block_size", "scheme", "rounding"}
    assert CompressionSpec(encoding="bf16").applies() == {
        "encoding",
        "min_elements",
        "uncompressed",
    }


def test_from_mapping() -> None:
    spec = CompressionSpec.from_mapping({"encoding": "q4", "uncompressed": ["*.bias", "*bn*"]})
    assert spec == CompressionSpec(encoding="q4", uncompressed=("*.bias", "*bn*"))
    assert CompressionSpec(encoding="q4", uncompressed=["*.bias"]).uncompressed == ("*.bias",)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown key 'bits'"):
        CompressionSpec.from_mapping({"encoding": "q4", "bits": 4})
    with pytest.raises(ConfigError, match="encoding is missing"):
        CompressionSpec.from_mapping({"block_size": 64})


SPECS = {
    "conv1.weight": TensorSpec((64, 3, 3, 3), "float32"),  # 1728 elements
    "bn1.weight": TensorSpec((2048,), "float32"),
    "bn1.num_batches_tracked": TensorSpec((), "int64"),
    "fc.weight": TensorSpec((10, 512), "float32"),
    "fc.bias": TensorSpec((10,), "float32"),
    "layer1.0.conv1.weight": TensorSpec((64, 64, 3, 3), "float32"),
    "head.weight": TensorSpec((1000, 8), "float16"),
}


def test_plan() -> None:
    spec = CompressionSpec(encoding="q8", uncompressed=("*bn*", "fc.*"))
    assert plan(SPECS, spec) == {
        "conv1.weight": "q8",
        "bn1.weight": None,  # matches *bn*
        "bn1.num_batches_tracked": None,  # an integer buffer
        "fc.weight": None,  # matches fc.*
        "fc.bias": None,
        "layer1.0.conv1.weight": "q8",
        "head.weight": None,  # not float32
    }
    assert plan(SPECS, None) == dict.fromkeys(SPECS)


def test_plan_min_elements() -> None:
    big_only = CompressionSpec(encoding="topk", min_elements=2048)
    assert [name for name, e in plan(SPECS, big_only).items() if e] == [
        "bn1.weight",
        "fc.weight",
        "layer1.0.conv1.weight",
    ]
    everything = CompressionSpec(encoding="f16", min_elements=0)
    assert plan(SPECS, everything)["fc.bias"] == "f16"
    assert plan({"s": TensorSpec((), "float32")}, everything) == {"s": "f16"}
