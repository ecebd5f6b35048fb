"""The JSON messages of secure aggregation's stages (the masked vector itself is msgpack).

Byte strings travel as standard base64 with padding (RFC 4648 section 4); each has an
exact decoded length, checked here, once. Specified in docs/protocol.md.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    WithJsonSchema,
)

from shared.schemas import ClientId, MetricName, MetricValue
from shared.secagg.keys import KEY_BYTES, NONCE_BYTES
from shared.secagg.shamir import SHARE_BYTES

__all__ = [
    "SEALED_BYTES",
    "KeysRequest",
    "MaskedHeader",
    "ParticipantKeys",
    "PostReply",
    "SharesReply",
    "SharesRequest",
    "Stage",
    "StageReply",
    "UnmaskRequest",
]

MAX_PEERS = 1024  # shares or keys per message: at most the clients a round can sum
SEALED_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + 16  # nonce, two shares, the GCM tag
Stage = Literal["keys", "shares", "masked", "unmask", "closed"]


def _from_base64(length: int) -> Callable[[Any], bytes]:
    def decode(value: Any) -> bytes:
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str):
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not standard base64 with padding") from None
        else:
            raise ValueError("expected a base64 string")
        if len(raw) != length:
            raise ValueError(f"expected {length} bytes, got {len(raw)}")
        return raw

    return decode


def _encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _schema(length: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "format": "byte", "description": f"{length} bytes"})


_AsBase64 = PlainSerializer(_encode, return_type=str)
Key = Annotated[bytes, BeforeValidator(_from_base64(KEY_BYTES)), _AsBase64, _schema(KEY_BYTES)]
Sealed = Annotated[
    bytes, BeforeValidator(_from_base64(SEALED_BYTES)), _AsBase64, _schema(SEALED_BYTES)
]
Share = Annotated[
    bytes, BeforeValidator(_from_base64(SHARE_BYTES)), _AsBase64, _schema(SHARE_BYTES)
]
Round = Annotated[StrictInt, Field(ge=1)]
Attempt = Annotated[StrictInt, Field(ge=0)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class KeysRequest(_Message):
    """POST /secagg/keys: a selected client's public keys and self-mask commitment."""

    client_id: ClientId
    round: Round
    attempt: Attempt
    c_pk: Key  # X25519: encrypts the shares sent to this client
    s_pk: Key  # X25519: agrees the pairwise mask seeds
    b_commit: Key  # SHA-256 commitment to the self-mask seed b


class SharesRequest(_Message):
    """POST /secagg/shares: one sealed pair of shares per neighbour."""

    client_id: ClientId
    round: Round
    attempt: Attempt
    shares: Annotated[dict[ClientId, Sealed], Field(max_length=MAX_PEERS)]


class UnmaskRequest(_Message):
    """POST /secagg/unmask: a survivor's shares of b (survivors) or s_sk (dropped clients)."""

    client_id: ClientId
    round: Round
    attempt: Attempt
    b_shares: Annotated[dict[ClientId, Share], Field(max_length=MAX_PEERS)] = {}
    sk_shares: Annotated[dict[ClientId, Share], Field(max_length=MAX_PEERS)] = {}


class MaskedHeader(_Message):
    """The fields of a POST /secagg/masked message beside the masked vector."""

    protocol: StrictInt
    client_id: ClientId
    round: Round
    attempt: Attempt
    num_examples: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)]
    masked: dict[str, Any]  # the tensor map, checked by the wire codec
    metrics: Annotated[dict[MetricName, MetricValue], Field(max_length=32)] = {}


class ParticipantKeys(BaseModel):
    """One participant's advertised public keys, as the stage view lists them."""

    client_id: str
    c_pk: Key
    s_pk: Key


class StageReply(BaseModel):
    """GET /secagg/state: where the round attempt is and what the client needs for it."""

    round: int
    attempt: int
    stage: Stage
    threshold: int
    num_neighbours: int | None
    deadline_in_s: float | None
    participants: list[ParticipantKeys] = []  # from stage shares on
    masking: list[str] = []  # from stage masked on: who sent their shares
    survivors: list[str] = []  # stage unmask: whose masked vectors are in the sum
    dropped: list[str] = []  # stage unmask: who sent shares but no masked vector


class SharesReply(BaseModel):
    """GET /secagg/shares: the sealed shares addressed to the caller, by sender."""

    round: int
    attempt: int
    shares: dict[str, Sealed]


class PostReply(BaseModel):
    """The answer to an accepted (or repeated) secure-aggregation POST."""

    accepted: bool
    duplicate: bool
    round: int
    attempt: int
    stage: Stage
