"""Tests of the streamed update body: the same bytes as `encode_message`, in bounded pieces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_worker import upload
from client_worker.upload import UploadBody
from shared.wire import encode_message


def _message(sizes: list[int], seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    weights = {
        f"t{i}": rng.standard_normal(size).astype(np.float32) for i, size in enumerate(sizes)
    }
    return {"protocol": 1, "client_id": "c", "round": 3, "weights": weights, "metrics": {}}


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), max_size=12),
    piece=st.integers(16, 4096),
    seed=st.integers(0, 2**32 - 1),
)
def test_pieces_join_to_the_encoded_message(sizes: list[int], piece: int, seed: int) -> None:
    message = _message(sizes, seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(upload, "PIECE_BYTES", piece)
        patch.setattr(upload, "_SMALL", piece // 4)
        body = UploadBody(message)
        pieces = [bytes(p) for p in body]
        again = b"".join(body)  # re-iterable: a retried POST sends the same bytes
    expected = encode_message(message)
    assert b"".join(pieces) == expected == again
    assert len(body) == body.nbytes == len(expected)
    assert all(0 < len(p) <= piece for p in pieces)


def test_large_tensors_are_sent_from_the_weights_memory_without_a_copy() -> None:
    weights = {"big": np.arange(3 * (1 << 20) // 4, dtype=np.float32)}  # 3 MiB
    body = UploadBody({"protocol": 1, "weights": weights})
    views = [p for p in body if isinstance(p, memoryview)]
    assert sum(v.nbytes for v in views) == weights["big"].nbytes
    assert all(v.nbytes <= upload.PIECE_BYTES for v in views)
    assert all(np.shares_memory(np.frombuffer(v, np.uint8), weights["big"]) for v in views)
    assert all(v.readonly for v in views)


def test_small_pieces_are_gathered() -> None:
    weights = {f"bias{i}": np.full(4, i, np.float32) for i in range(50)}
    body = UploadBody({"protocol": 1, "weights": weights})
    assert len(list(body)) == 1  # 50 small tensors and their framing: one piece
