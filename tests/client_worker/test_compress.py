"""A client's update as encoded deltas: what it sends, and its residuals across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from client_worker.compress import FEEDBACK_FILE, UpdateEncoder, deltas_of
from shared.compression import decode_update, is_compressed
from shared.wire import decode_message, encode_message, spec_of

TOPK = {"encoding": "topk", "fraction": 0.1, "values": "q8", "error_feedback": True}


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "fc.bias": rng.standard_normal(64).astype(np.float32),
        "bn.num_batches_tracked": np.array(7 + seed, np.int64),
    }


def trained(global_weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (a + 0.01 * rng.standard_normal(a.shape)).astype(a.dtype)
        if a.dtype.kind == "f"
        # an integer tensor changes by a count
        else np.array(a + 3)
        for name, a in global_weights.items()
    }


def encode(encoder: UpdateEncoder, section: dict[str, Any], server_round: int) -> dict[str, Any]:
    global_weights = model(0)
    encoded = encoder.encode(
        {"compression": section},
        trained(global_weights, server_round),
        global_weights,
        seed=5,
        server_round=server_round,
        client_index=2,
    )
    assert encoded is not None
    return encoded


def wire(tensors: dict[str, Any]) -> bytes:
    return encode_message({"weights": tensors})


def test_no_compression_announced_sends_the_weights() -> None:
    weights = model(0)
    encoder = UpdateEncoder("c", None)
    config = {"model": "mlp"}
    assert encoder.encode(config, weights, weights, seed=0, server_round=1, client_index=0) is None


def test_floating_tensors_go_as_encoded_deltas_and_integers_as_values() -> None:
    encoded = encode(UpdateEncoder("c", None), {"encoding": "q8"}, 1)
    global_weights = model(0)
    delta = deltas_of(trained(global_weights, 1), global_weights)
    assert is_compressed(encoded["fc.weight"])
    assert not is_compressed(encoded["fc.bias"])  # 64 elements: under min_elements
    decoded = decode_update(decode_message(wire(encoded))["weights"], spec_of(global_weights))
    scale = np.abs(delta["fc.weight"]).max() / 127
    np.testing.assert_allclose(decoded["fc.weight"], delta["fc.weight"], atol=scale)
    np.testing.assert_array_equal(decoded["fc.bias"], delta["fc.bias"])
    assert decoded["bn.num_batches_tracked"] == 10  # the trained count, not a difference


def test_stochastic_rounding_is_seeded_by_seed_round_and_client() -> None:
    section = {"encoding": "q8", "rounding": "stochastic"}
    first = wire(encode(UpdateEncoder("c", None), section, 1))
    assert wire(encode(UpdateEncoder("c", None), section, 1)) == first
    global_weights = model(0)
    other_client = UpdateEncoder("c", None).encode(
        {"compression": section},
        trained(global_weights, 1),
        global_weights,
        seed=5,
        server_round=1,
        client_index=3,
    )
    assert other_client is not None
    assert wire(other_client) != first


def test_error_feedback_survives_a_restart(tmp_path: Path) -> None:
    before = UpdateEncoder("c", tmp_path)
    encode(before, TOPK, 1)
    before.commit()
    assert (tmp_path / "c" / FEEDBACK_FILE).exists()
    carried_on = wire(encode(before, TOPK, 2))
    restarted = UpdateEncoder("c", tmp_path)  # a new worker process on the same state dir
    assert wire(encode(restarted, TOPK, 2)) == carried_on
    fresh = UpdateEncoder("c", tmp_path / "elsewhere")
    assert wire(encode(fresh, TOPK, 2)) != carried_on  # without the residuals it differs


def test_a_rejected_update_leaves_the_residuals_as_they_were(tmp_path: Path) -> None:
    encoder = UpdateEncoder("c", tmp_path)
    encode(encoder, TOPK, 1)
    encoder.commit()
    saved = (tmp_path / "c" / FEEDBACK_FILE).read_bytes()
    first = wire(encode(encoder, TOPK, 2))
    encoder.discard()  # the aggregator refused round 2's update
    assert wire(encode(encoder, TOPK, 2)) == first
    assert (tmp_path / "c" / FEEDBACK_FILE).read_bytes() == saved


def test_without_error_feedback_nothing_is_kept(tmp_path: Path) -> None:
    encoder = UpdateEncoder("c", tmp_path)
    encode(encoder, {**TOPK, "error_feedback": False}, 1)
    encoder.commit()
    assert not (tmp_path / "c" / FEEDBACK_FILE).exists()
