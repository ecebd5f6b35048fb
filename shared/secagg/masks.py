"""Masks: a 32-byte seed expanded into uint32 vectors, added by clients, removed by the server.

`expand` is the keystream of AES-256-CTR under the seed (initial counter block all zeros,
the 128-bit block incremented big-endian), read as little-endian uint32. Client i sends
y_i = q_i + PRG(b_i) + sum over neighbours j of sign(i, j) * PRG(s_ij) (mod 2^32), with
sign +1 when i's id sorts before j's and -1 after: each pairwise mask cancels in the sum.
The server subtracts the survivors' self masks and, for each dropped client d, the
survivors' pairwise masks with d, rebuilt from d's reconstructed key. With a modulus m
below 2^32 (a power of two) the client sends y_i mod m and the server reduces the unmasked
sum mod m: reduction mod m commutes with every sum and difference taken mod 2^32.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.secagg.keys import KeyPair, mask_seed
from shared.secagg.quantize import MODULUS

__all__ = ["add_mask", "expand", "mask_update", "pair_sign", "reduce", "unmask_sum"]

_ZERO_COUNTER = bytes(16)


def expand(seed: bytes, length: int) -> np.ndarray:
    """Return `length` uint32 values of AES-256-CTR's keystream under `seed`."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    stream = encryptor.update(bytes(4 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32, copy=False)


def add_mask(vector: np.ndarray, seed: bytes, sign: int) -> None:
    """Add (sign +1) or subtract (sign -1) PRG(seed) to the uint32 `vector` in place, mod 2^32."""
    mask = expand(seed, vector.size)
    if sign > 0:
        np.add(vector, mask, out=vector)
    else:
        np.subtract(vector, mask, out=vector)


def pair_sign(own: str, peer: str) -> int:
    """Return +1 when `own` sorts before `peer` (the one who adds), else -1."""
    return 1 if own < peer else -1


def mask_update(
    quantized: np.ndarray,
    *,
    client_id: str,
    self_seed: bytes,
    s_pair: KeyPair,
    peers: Mapping[str, bytes],
    context: bytes,
    modulus: int = MODULUS,
) -> np.ndarray:
    """Return the masked copy of a quantized update; `peers` maps neighbour ids to their s_pk."""
    masked = np.array(quantized, dtype=np.uint32)
    add_mask(masked, self_seed, 1)
    for peer, public in peers.items():
        add_mask(masked, mask_seed(s_pair, public, context), pair_sign(client_id, peer))
    return reduce(masked, modulus)


def reduce(vector: np.ndarray, modulus: int) -> np.ndarray:
    """Return the uint32 `vector` reduced modulo a power of two `modulus` (in place)."""
    if modulus < MODULUS:
        np.bitwise_and(vector, np.uint32(modulus - 1), out=vector)
    return vector


def unmask_sum(
    masked_sum: np.ndarray,
    *,
    self_seeds: Mapping[str, bytes],
    dropped_keys: Mapping[str, bytes],
    public_keys: Mapping[str, bytes],
    neighbours: Mapping[str, Collection[str]],
    context: bytes,
    modulus: int = MODULUS,
) -> np.ndarray:
    """Return the sum of the survivors' quantized updates from the sum of their masked ones.

    `self_seeds` holds each survivor's b_i, `dropped_keys` each dropped client's s_sk (raw),
    `public_keys` every client's s_pk, `neighbours` the round's graph.
    """
    total = np.array(masked_sum, dtype=np.uint32)
    for seed in self_seeds.values():
        add_mask(total, seed, -1)
    for dropped, raw in dropped_keys.items():
        pair = KeyPair.from_private_bytes(raw)
        for survivor in sorted(set(neighbours[dropped]) & set(self_seeds)):
            seed = mask_seed(pair, public_keys[survivor], context)
            add_mask(total, seed, -pair_sign(survivor, dropped))
    return reduce(total, modulus)
