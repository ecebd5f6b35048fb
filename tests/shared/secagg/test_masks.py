"""Masks: pairwise masks cancel, the server removes self masks and dropped clients' masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.secagg.graph import holders, neighbours, share_positions
from shared.secagg.keys import (
    KeyPair,
    commit_seed,
    mask_seed,
    open_shares,
    round_context,
    seal_shares,
    share_aad,
    share_key,
)
from shared.secagg.masks import expand, mask_update, unmask_sum

CONTEXT = round_context(3, 1)


def test_expand_is_aes_ctr_keystream() -> None:
    seed = bytes(range(32))
    assert np.array_equal(expand(seed, 10), expand(seed, 12)[:10])
    assert not np.array_equal(expand(seed, 8), expand(bytes(32), 8))
    # NIST SP 800-38A F.5.5 is CTR with another counter; check the block function instead:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    block = Cipher(algorithms.AES(seed), modes.ECB()).encryptor().update(bytes(16))
    assert expand(seed, 4).tobytes() == block  # keystream block 0 = AES_k(0^128)


def test_pair_seeds_agree_and_differ_by_context() -> None:
    a, b = KeyPair(), KeyPair()
    assert mask_seed(a, b.public, CONTEXT) == mask_seed(b, a.public, CONTEXT)
    assert mask_seed(a, b.public, CONTEXT) != mask_seed(a, b.public, round_context(3, 2))
    assert share_key(a, b.public, CONTEXT) != mask_seed(a, b.public, CONTEXT)


def test_sealed_shares_are_bound_to_sender_and_receiver() -> None:
    a, b = KeyPair(), KeyPair()
    key = share_key(a, b.public, CONTEXT)
    sealed = seal_shares(key, b"x" * 66, share_aad(CONTEXT, "a", "b"))
    assert open_shares(share_key(b, a.public, CONTEXT), sealed, share_aad(CONTEXT, "a", "b"))
    with pytest.raises(ValueError, match="authenticate"):
        open_shares(key, sealed, share_aad(CONTEXT, "a", "c"))
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ValueError, match="authenticate"):
        open_shares(key, tampered, share_aad(CONTEXT, "a", "b"))


@settings(max_examples=15, deadline=None)
@given(
    st.integers(3, 9),
    st.sampled_from([None, 2, 4]),
    st.sampled_from([1 << 32, 1 << 24, 1 << 16]),
    st.data(),
)
def test_masked_sum_unmasks_to_the_plain_sum(
    n: int, k: int | None, modulus: int, data: st.DataObject
) -> None:
    ids = [f"c{i}" for i in range(n)]
    graph = neighbours(ids, k, seed=0, server_round=3, attempt=1)
    pairs = {c: KeyPair() for c in ids}
    seeds = {c: bytes([i]) * 32 for i, c in enumerate(ids)}
    rng = np.random.default_rng(n)
    quantized = {c: rng.integers(0, min(1 << 22, modulus), 50, dtype=np.uint32) for c in ids}
    dropped = set(data.draw(st.lists(st.sampled_from(ids), max_size=n - 1, unique=True)))
    survivors = [c for c in ids if c not in dropped]
    total = np.zeros(50, np.uint32)
    for c in survivors:
        peers = {p: pairs[p].public for p in graph[c]}
        masked = mask_update(
            quantized[c],
            client_id=c,
            self_seed=seeds[c],
            s_pair=pairs[c],
            peers=peers,
            context=CONTEXT,
            modulus=modulus,
        )
        assert not np.array_equal(masked, quantized[c])
        assert int(masked.max()) < modulus
        np.add(total, masked, out=total)
    plain = np.zeros(50, np.uint64)
    for c in survivors:
        plain += quantized[c]
    unmasked = unmask_sum(
        total,
        self_seeds={c: seeds[c] for c in survivors},
        dropped_keys={d: pairs[d].private_bytes() for d in dropped},
        public_keys={c: pairs[c].public for c in ids},
        neighbours=graph,
        context=CONTEXT,
        modulus=modulus,
    )
    assert np.array_equal(unmasked, (plain % modulus).astype(np.uint32))


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 40), st.integers(1, 10).map(lambda h: 2 * h), st.integers(0, 5))
def test_harary_graph_is_k_regular_and_symmetric(n: int, k: int, attempt: int) -> None:
    ids = [f"client-{i}" for i in range(n)]
    graph = neighbours(ids, k, seed=7, server_round=2, attempt=attempt)
    degree = min(k, n - 1)
    for c, linked in graph.items():
        assert c not in linked
        assert len(linked) == degree
        assert all(c in graph[p] for p in linked)
        assert holders(graph, c) == linked | {c}
    assert graph == neighbours(list(reversed(ids)), k, seed=7, server_round=2, attempt=attempt)


def test_share_positions_are_one_based_by_id() -> None:
    assert share_positions(["b", "a", "c"]) == {"a": 1, "b": 2, "c": 3}


def test_odd_neighbour_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        neighbours([f"c{i}" for i in range(10)], 3, seed=0, server_round=1, attempt=0)


def test_commitment_binds_the_seed() -> None:
    assert commit_seed(bytes(32)) != commit_seed(bytes(31) + b"\x01")
    assert len(commit_seed(bytes(32))) == 32
