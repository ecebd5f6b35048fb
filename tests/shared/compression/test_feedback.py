"""Error feedback: nothing is lost over rounds; residuals saved and loaded by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.compression import (
    CompressionSpec,
    ErrorFeedback,
    decode_tensor,
    decode_update,
    with_feedback,
)
from shared.errors import NonFiniteTensor, SpecMismatch, StoreError
from shared.wire_tensors import TensorSpec, spec_of

LOSSY = [
    CompressionSpec(encoding="topk", fraction=0.05, min_elements=0),
    CompressionSpec(encoding="topk", fraction=0.1, values="q8", block_size=64, min_elements=0),
    CompressionSpec(encoding="q4", block_size=64, rounding="stochastic", min_elements=0),
    CompressionSpec(encoding="bf16", min_elements=0),
]


def test_the_residual_is_what_decoding_lost() -> None:
    delta = np.array([1.0, -4.0, 0.5, 2.0], np.float32)
    residual = np.array([0.0, 0.0, 3.0, -0.5], np.float32)
    spec = CompressionSpec(encoding="topk", fraction=0.5)
    wire_map, after = with_feedback("w", delta, residual, spec)
    assert decode_tensor("w", wire_map, TensorSpec((4,), "float32")).tolist() == [0, -4, 3.5, 0]
    assert after.tolist() == [1.0, 0.0, 0.0, 1.5]


@settings(deadline=None, max_examples=40)
@given(spec=st.sampled_from(LOSSY), rounds=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_decoded_updates_plus_the_residual_sum_to_the_deltas(
    spec: CompressionSpec, rounds: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    feedback = ErrorFeedback()
    sent = np.zeros((10, 30))
    true = np.zeros((10, 30))
    for _ in range(rounds):
        delta = (rng.standard_normal((10, 30)) * 1e-3).astype(np.float32)
        update = feedback.encode_update({"w": delta}, spec, rng)
        sent += decode_update(update, {"w": TensorSpec((10, 30), "float32")})["w"]
        true += delta
    scale = rounds * 1e-3 * 8  # rounding of float32 arithmetic on values of this size
    assert np.allclose(sent + feedback.residuals["w"], true, rtol=0, atol=scale * 2.0**-20)


def test_plain_tensors_keep_no_residual() -> None:
    deltas = {"w": np.ones((40, 40), np.float32), "b": np.ones(4, np.float32)}
    feedback = ErrorFeedback()
    update = feedback.encode_update(deltas, CompressionSpec(encoding="topk"))
    assert update["b"] is deltas["b"]
    assert list(feedback.residuals) == ["w"]
    assert feedback.encode_update(deltas, None) == deltas
    with pytest.raises(SpecMismatch, match="residual shape"):
        feedback.encode_update({"w": np.ones((4, 400), np.float32)}, CompressionSpec(encoding="q8"))
    before = {name: r.copy() for name, r in feedback.residuals.items()}
    bad = {"v": np.ones((40, 40), np.float32), "w": np.full((40, 40), np.nan, np.float32)}
    with pytest.raises(NonFiniteTensor):
        feedback.encode_update(bad, CompressionSpec(encoding="topk"))
    assert list(feedback.residuals) == ["w"]  # nothing kept of an update that failed
    assert feedback.residuals["w"].tobytes() == before["w"].tobytes()
    feedback.reset()
    assert feedback.residuals == {}


def test_save_and_load(tmp_path: Path) -> None:
    residuals = {
        "layer1.0.conv1.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "file": np.zeros(0, np.float32),  # names np.savez could not take as keywords
        "allow_pickle": np.ones(1, np.float32),
    }
    path = tmp_path / "residuals.npz"
    ErrorFeedback(residuals).save(path)
    loaded = ErrorFeedback.load(path).residuals
    assert list(loaded) == list(residuals)
    for name, array in residuals.items():
        assert loaded[name].dtype == np.float32
        assert loaded[name].tobytes() == array.tobytes()
        assert loaded[name].shape == array.shape
    assert spec_of(loaded) == spec_of(residuals)
    assert not (tmp_path / "residuals.npz.tmp").exists()


def test_load_refuses_what_save_does_not_write(tmp_path: Path) -> None:
    cases = {
        "missing.npz": None,
        "garbage.npz": b"not a zip file",
        "array.npy": "npy",
        "wide.npz": {"w": np.zeros(2)},
        "nan.npz": {"w": np.array([np.nan], np.float32)},
        "objects.npz": {"w": np.array([None], object)},
    }
    for file_name, content in cases.items():
        path = tmp_path / file_name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content == "npy":
            np.save(path, np.zeros(2, np.float32))
        elif isinstance(content, dict):
            np.savez(path, **content)
        with pytest.raises(StoreError, match="residual"):
            ErrorFeedback.load(path)


def test_save_to_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot write residuals"):
        ErrorFeedback({"w": np.zeros(2, np.float32)}).save(tmp_path / "no" / "r.npz")
