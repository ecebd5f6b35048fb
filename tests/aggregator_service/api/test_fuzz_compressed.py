"""Property-based fuzzing of POST /receive with delta updates whose compressed tensors are bad.

The run compresses updates; each case is a valid delta update whose large tensor, encoded
in one of the seven encodings and schemes, is then broken in a way no valid map can be:
a key removed or added, a value of the wrong type, a bin cut short or made longer, a
shape or block size that does not fit, a NaN or Inf scale, an unknown or swapped
encoding, a top-k count, gap or index out of place. As in test_fuzz.py, every answer
must be a clean 4xx JSON error, and the model and the round's updates stay unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.compression import CompressionSpec, encode_tensor
from shared.compression.varint import encode_uvarints
from tests.aggregator_service.api.test_fuzz import (
    FUZZ_SETTINGS,
    SELECTED,
    Target,
    assert_clean_error,
)
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

LARGE = "1.weight"  # the 2NN's 200 x 784 layer
SPECS = {
    "q8": CompressionSpec(encoding="q8"),
    "q8 minmax": CompressionSpec(encoding="q8", scheme="minmax", block_size=64),
    "q4": CompressionSpec(encoding="q4", rounding="stochastic"),
    "f16": CompressionSpec(encoding="f16"),
    "bf16": CompressionSpec(encoding="bf16"),
    "topk": CompressionSpec(encoding="topk", fraction=0.01),
    "topk q8": CompressionSpec(encoding="topk", fraction=0.01, values="q8"),
}
WRONG_TYPED: list[Any] = [None, True, -1, 2**40, 1.5, "x", b"\x00", [], {}]
Break = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


@pytest.fixture
def target(start_app: AppFactory) -> Target:
    """A compressing app in round 1 (clients a and b selected), rate limit off."""
    config = experiment(num_rounds=2, compression={"encoding": "q8"})
    client = start_app(config, max_body_bytes=4 << 20, receive_rate=0)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training" and SELECTED in s["selected"])
    _, weights = global_model(client)
    return Target(client, {name: np.array(a) for name, a in weights.items()})


def _bins(obj: dict[str, Any]) -> list[str]:
    return [key for key, value in obj.items() if isinstance(value, bytes)]


def drop_key(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    keys = sorted(obj)
    del obj[keys[rng.integers(len(keys))]]
    return obj


def add_key(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {**obj, f"extra{rng.integers(100)}": 1}


def wrong_type(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    key = sorted(obj)[rng.integers(len(obj))]
    others = [v for v in WRONG_TYPED if type(v) is not type(obj[key])]
    obj[key] = others[rng.integers(len(others))]
    return obj


def resize_bin(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    key = _bins(obj)[rng.integers(len(_bins(obj)))]
    step = int(rng.integers(1, 9))
    if rng.integers(2) and len(obj[key]) >= step:
        obj[key] = obj[key][:-step]
    else:
        obj[key] = obj[key] + b"\x80" * step  # never valid varints, never the right length
    return obj


def bad_shape(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    obj["shape"] = [[784, 200], [200, 785], [156800], [200, 784, 1], [2**62, 2**62]][
        rng.integers(5)
    ]
    return obj


def swap_encoding(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    names = [
        "q3",
        "",
        "Q8",
        "topk ",
        "f32",
        *(n for n in ("f16", "q8", "q4", "topk") if n != obj["encoding"]),
    ]
    obj["encoding"] = names[rng.integers(len(names))]
    if obj["encoding"] in ("f16",) and set(obj) == {"encoding", "dtype", "shape", "data"}:
        obj["encoding"] = "q3"  # bf16 -> f16 with the same bits could be valid
    return obj


def bad_floats(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    inner = obj["values"] if isinstance(obj.get("values"), dict) else obj
    key = next(k for k in ("scales", "mins", "values", "data") if isinstance(inner.get(k), bytes))
    if key == "data":  # f16 or bf16: an element whose exponent bits are all ones
        bits = np.frombuffer(inner[key], "<u2").copy()
        bits[rng.integers(bits.size)] = 0x7F80 if obj["encoding"] == "bf16" else 0x7C00
        inner[key] = bits.tobytes()
        return obj
    floats = np.frombuffer(inner[key], "<f4").copy()
    bad = [np.nan, np.inf, -np.inf] + ([2.0**70] if key != "values" else [])  # scale > 2**64
    floats[rng.integers(floats.size)] = bad[rng.integers(len(bad))]
    inner[key] = floats.tobytes()
    return obj


def bad_block_size(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    inner = obj["values"] if isinstance(obj.get("values"), dict) else obj
    if "block_size" not in inner:
        return bad_shape(obj, rng)
    sizes = [0, -1, 63, 4097, 2**40, 128 if inner["block_size"] != 128 else 512]
    inner["block_size"] = sizes[rng.integers(len(sizes))]
    return obj


def bad_topk(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if obj["encoding"] != "topk":
        return wrong_type(obj, rng)
    nnz = obj["nnz"]
    kind = rng.integers(3)
    if kind == 0:
        obj["nnz"] = nnz + int(rng.integers(1, 5)) * (1 if rng.integers(2) else -1)
    elif kind == 1:  # a repeated index: a gap of 0 after the first
        gaps = [int(rng.integers(1, 100))] + [0] + [1] * (nnz - 2)
        obj["indices"] = encode_uvarints(np.array(gaps, np.uint64))
    else:  # the last index past the end
        gaps = [1] * (nnz - 1) + [200 * 784]
        obj["indices"] = encode_uvarints(np.array(gaps, np.uint64))
    return obj


BREAKS: dict[str, Break] = {
    "drop key": drop_key,
    "add key": add_key,
    "wrong type": wrong_type,
    "resize bin": resize_bin,
    "bad shape": bad_shape,
    "swap encoding": swap_encoding,
    "bad floats": bad_floats,
    "bad block size": bad_block_size,
    "bad topk": bad_topk,
}
CASES = st.tuples(
    st.sampled_from(sorted(SPECS)), st.sampled_from(sorted(BREAKS)), st.integers(0, 2**32)
)


def test_receive_rejects_every_broken_compressed_tensor(target: Target) -> None:
    rng = np.random.default_rng(0)
    weights = target.weights
    delta = (rng.standard_normal(weights[LARGE].shape) * 0.01).astype(np.float32)
    encoded: dict[str, Any] = {
        name: encode_tensor(LARGE, delta, spec, rng) for name, spec in SPECS.items()
    }
    plain: dict[str, Any] = {n: np.zeros_like(a) for n, a in weights.items() if n != LARGE}
    kinds: Counter[str] = Counter()

    @FUZZ_SETTINGS
    @given(case=CASES)
    def check(case: tuple[str, str, int]) -> None:
        spec, kind, seed = case
        kinds[f"{spec}: {kind}"] += 1
        broken = BREAKS[kind](
            msgpack.unpackb(msgpack.packb(encoded[spec])), np.random.default_rng(seed)
        )
        body = update_body(SELECTED, 1, {**plain, LARGE: broken}, delta=True)
        reply = target.client.post("/receive", content=body, headers=MSGPACK)
        target.statuses[reply.status_code] += 1
        error = assert_clean_error(reply, statuses=range(400, 500))
        target.errors[error["error"]] += 1
        target.check_unchanged()

    check()
    target.report("POST /receive, compressed tensors")
    assert set(target.statuses) <= {400, 422}
    # the map unbroken is taken: the cases were refused for what broke them
    for client_id in ("a", "b"):
        body = update_body(client_id, 1, {**plain, LARGE: encoded["topk q8"]}, delta=True)
        assert target.client.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(target.client, lambda s: s["round"] == 2)
