"""Steps between model versions: the receiver's sum equals the sender's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from shared.compression import CompressionSpec, apply_step, step_between
from shared.errors import SpecMismatch
from shared.wire import decode_message, encode_message

Q8 = CompressionSpec(encoding="q8")


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((64, 40)).astype(np.float32),
        "b": rng.standard_normal(40).astype(np.float32),  # under min_elements: plain
        "n": np.array(seed, dtype=np.int64),
    }


def test_a_step_through_the_wire_lands_where_the_sender_lands() -> None:
    old, new = model(1), model(2)
    step = step_between(new, old, Q8)
    sent = decode_message(encode_message({"step": step}))["step"]
    sender, receiver = apply_step(old, step), apply_step(old, sent)
    for name in old:
        assert sender[name].dtype == old[name].dtype
        assert sender[name].tobytes() == receiver[name].tobytes()
    assert receiver["n"] == 2  # integer tensors take the new value
    # small float32 tensors go plain: old + (new - old), new up to float32 rounding
    assert np.allclose(receiver["b"], new["b"], rtol=0, atol=1e-6)
    error = np.abs(receiver["w"] - new["w"]).max()
    assert 0 < error < 0.05  # q8 of the difference


def test_a_step_must_name_exactly_the_held_tensors() -> None:
    old = model(1)
    step = step_between(model(2), old, Q8)
    with pytest.raises(SpecMismatch, match="missing"):
        apply_step(old, {k: v for k, v in step.items() if k != "b"})
    with pytest.raises(SpecMismatch, match="not a tensor"):
        apply_step(old, {**step, "extra": step["b"]})
    with pytest.raises(SpecMismatch):
        apply_step({**old, "b": np.zeros(3, np.float32)}, step)
