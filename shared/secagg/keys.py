"""Key agreement and share encryption: X25519, HKDF-SHA256 and AES-256-GCM (`cryptography`).

Each client draws two X25519 key pairs per round attempt: `c` to encrypt the Shamir shares
it sends its neighbours, `s` to agree the pairwise mask seeds. A pair's shared secret goes
through HKDF-SHA256 (no salt, 32 bytes) with an `info` naming its use and the round
attempt, so no key serves two purposes or two attempts. Shares are sealed with AES-256-GCM
under a random 96-bit nonce, the additional data binding round, attempt, sender and
receiver: the aggregator that relays them can neither read nor redirect them.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "PROTOCOL_LABEL",
    "KeyPair",
    "commit_seed",
    "mask_seed",
    "open_shares",
    "round_context",
    "seal_shares",
    "share_aad",
    "share_key",
]

PROTOCOL_LABEL = "tributary-secagg/v1"
KEY_BYTES = 32
NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw


class KeyPair:
    """An X25519 key pair; the private key never leaves the client's memory."""

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self.private = private if private is not None else X25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """Return the pair of a raw 32-byte private key."""
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """Return the raw 32-byte private key (to be secret-shared, never sent in clear)."""
        return self.private.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def agree(self, peer_public: bytes) -> bytes:
        """Return the X25519 shared secret with a peer's raw public key; ValueError if unusable."""
        if len(peer_public) != KEY_BYTES:
            raise ValueError(f"a public key is {KEY_BYTES} bytes, got {len(peer_public)}")
        return self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))


def round_context(server_round: int, attempt: int) -> bytes:
    """Return the bytes naming one round attempt: "tributary-secagg/v1|<round>|<attempt>"."""
    return f"{PROTOCOL_LABEL}|{server_round}|{attempt}".encode()


def mask_seed(s_pair: KeyPair, peer_s_public: bytes, context: bytes) -> bytes:
    """Return the 32-byte seed of the pairwise mask two clients share."""
    return _derive(s_pair.agree(peer_s_public), b"|mask|" + context)


def share_key(c_pair: KeyPair, peer_c_public: bytes, context: bytes) -> bytes:
    """Return the AES-256-GCM key of the shares two clients exchange."""
    return _derive(c_pair.agree(peer_c_public), b"|shares|" + context)


def share_aad(context: bytes, sender: str, receiver: str) -> bytes:
    """Return the additional data binding a share ciphertext: context|sender|receiver."""
    return context + f"|{sender}|{receiver}".encode()


def seal_shares(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Return nonce || AES-256-GCM(plaintext) || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_shares(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Return the plaintext of `seal_shares`; ValueError if it was altered or misaddressed."""
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ValueError("the share ciphertext does not authenticate") from None


def commit_seed(seed: bytes) -> bytes:
    """Return SHA-256("tributary-secagg/v1|self-mask|" || seed): binds a self-mask seed."""
    return hashlib.sha256(f"{PROTOCOL_LABEL}|self-mask|".encode() + seed).digest()


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)
