"""The wire format: msgpack messages carrying tensors, and the protocol versions.

Why msgpack: it is a safe, schema-less binary format with a `bin` type, so tensors travel
as their raw little-endian bytes (no JSON lists, no base64) and decoding can never run
code the way pickle can. Never allow pickle anywhere on this path.

A message is a msgpack map; numpy arrays anywhere in it travel as tensor maps
(wire_tensors.py: raw bytes + dtype + shape, and weights maps checked against a spec,
whose names this module re-exports). Protocol 1 is the base version; protocol 2 adds
"groups": named weights-like maps beside the weights (a SCAFFOLD control variate, say).
The full format is specified in docs/protocol.md.

Encoding copies each tensor's bytes once (into the output buffer; `encode_chunks` leaves
them in place, for senders that stream the pieces), each tensor's data aligned to 8 bytes
from the message start. Decoding is zero-copy. This module and wire_tensors.py import
only numpy and msgpack, so a thin client needs nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from shared.errors import MalformedMessage, ProtocolVersionError, SpecMismatch, TensorError
from shared.msgpack_reader import unpack
from shared.wire_tensors import (
    DTYPES,
    MAX_NDIM,
    TensorSpec,
    decode_tensor,
    decode_weights,
    encode_tensor,
    kind_of,
    spec_of,
    to_float16,
)

__all__ = [
    "DTYPES",
    "GROUPS_PROTOCOL",
    "GROUP_NAME_PATTERN",
    "MAX_GROUPS",
    "MAX_NDIM",
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOLS",
    "TensorSpec",
    "check_protocol",
    "decode_groups",
    "decode_message",
    "decode_tensor",
    "decode_weights",
    "encode_chunks",
    "encode_message",
    "protocol_for",
    "spec_of",
    "to_float16",
]

PROTOCOL_VERSION = 1  # the base version: a message without tensor groups
GROUPS_PROTOCOL = 2  # the version whose messages may carry "groups"
SUPPORTED_PROTOCOLS: tuple[int, ...] = (PROTOCOL_VERSION, GROUPS_PROTOCOL)
MAX_GROUPS = 8  # tensor groups per message
GROUP_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
_GROUP_NAME = re.compile(GROUP_NAME_PATTERN)


# ---------------------------------------------------------------------------- encoding


def encode_message(message: Mapping[str, Any]) -> bytes:
    """Encode a message; numpy arrays anywhere inside become tensor maps."""
    return b"".join(encode_chunks(message))


def encode_chunks(message: Mapping[str, Any]) -> list[bytes | memoryview]:
    """Encode a message as the pieces whose concatenation `encode_message` returns.

    A tensor's data is a read-only view of the array's memory (no copy): the pieces are
    valid while the arrays stay unchanged. Senders stream them instead of joining them.
    """
    encoder = _Encoder()
    encoder.encode(message, "")
    return encoder.chunks


class _Encoder:
    """The chunks of one message so far, and the byte offset where the next one starts."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer()
        self.chunks: list[bytes | memoryview] = []
        self.pos = 0

    def put(self, chunk: bytes | memoryview) -> None:
        """Append one chunk."""
        self.chunks.append(chunk)
        self.pos += len(chunk)

    def encode(self, obj: Any, path: str) -> None:
        """Append one object; `path` names it in errors."""
        if isinstance(obj, np.ndarray):
            head, data = encode_tensor(obj, path, offset=self.pos, packer=self.packer)
            self.put(head)
            self.put(data)
        elif isinstance(obj, Mapping):
            self.put(self.packer.pack_map_header(len(obj)))
            for key, value in obj.items():
                self.put(self.packer.pack(key))
                self.encode(value, f"{path}.{key}" if path else str(key))
        elif isinstance(obj, list | tuple):
            self.put(self.packer.pack_array_header(len(obj)))
            for i, value in enumerate(obj):
                self.encode(value, f"{path}[{i}]")
        elif isinstance(obj, np.generic):
            self.put(self.packer.pack(obj.item()))
        else:
            self.put(self.packer.pack(obj))


# ---------------------------------------------------------------------------- decoding


def decode_message(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a message (a msgpack map); tensors stay raw maps until `decode_weights`."""
    message = unpack(data)
    if not isinstance(message, dict):
        raise MalformedMessage(f"a message must be a msgpack map, got {kind_of(message)}")
    return message


def check_protocol(
    message: Mapping[str, Any], *, supported: tuple[int, ...] = SUPPORTED_PROTOCOLS
) -> int:
    """Return the message's protocol version; raise unless it is one of `supported`.

    The version must be an int (true, 1.0 or "1" is not); a version-1 message must not
    carry "groups".
    """
    version = message.get("protocol")
    if type(version) is not int or version not in supported:
        speaks = " and ".join(str(v) for v in supported)
        raise ProtocolVersionError(
            f"protocol version {version!r} is not supported; this side speaks {speaks}"
        )
    if version < GROUPS_PROTOCOL and "groups" in message:
        raise MalformedMessage(
            f"a protocol {version} message cannot carry 'groups' (protocol {GROUPS_PROTOCOL} can)"
        )
    return version


def protocol_for(groups: Mapping[str, Any]) -> int:
    """Return the version a message with these tensor groups is sent as: 1 if none, else 2."""
    return GROUPS_PROTOCOL if groups else PROTOCOL_VERSION


def decode_groups(
    obj: Any,
    *,
    spec: Mapping[str, Mapping[str, TensorSpec]] | None = None,
    allow_nonfinite: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Decode a message's "groups" value (None: no groups) into group name -> weights.

    With `spec` (group name -> tensor spec), the group names must be exactly its keys and
    each group must match its spec like `decode_weights`. Errors name the tensor as
    ``groups.<group>.<tensor>``.
    """
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise MalformedMessage(f"groups must be a map of group name to weights, got {kind_of(obj)}")
    if len(obj) > MAX_GROUPS:
        raise MalformedMessage(f"{len(obj)} tensor groups exceed the limit of {MAX_GROUPS}")
    for name in obj:
        if not isinstance(name, str) or not _GROUP_NAME.match(name):
            raise MalformedMessage(f"group name {name!r:.40} does not match {GROUP_NAME_PATTERN}")
    if spec is not None:
        _check_group_names(obj, spec)
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name in spec if spec is not None else obj:
        group_spec = spec[name] if spec is not None else None
        groups[name] = _decode_group(name, obj[name], group_spec, allow_nonfinite)
    return groups


def _decode_group(
    name: str, obj: Any, spec: Mapping[str, TensorSpec] | None, allow_nonfinite: bool
) -> dict[str, np.ndarray]:
    """Decode one group's weights map; tensor errors name ``groups.<name>.<tensor>``."""
    if not isinstance(obj, dict):
        raise MalformedMessage(
            f"group {name!r} must be a map of name to tensor, got {kind_of(obj)}"
        )
    try:
        return decode_weights(obj, spec=spec, allow_nonfinite=allow_nonfinite)
    except TensorError as exc:
        raise type(exc)(f"groups.{name}.{exc.tensor}", exc.problem) from None
    except MalformedMessage as exc:
        raise MalformedMessage(f"group {name!r}: {exc}") from None


def _check_group_names(obj: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    missing = [name for name in spec if name not in obj]
    if missing:
        raise SpecMismatch(f"groups.{missing[0]}", f"group missing (expected {sorted(spec)})")
    unexpected = [name for name in obj if name not in spec]
    if unexpected:
        raise SpecMismatch(f"groups.{unexpected[0]}", f"unexpected group (expected {sorted(spec)})")
