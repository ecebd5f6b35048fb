"""The fields of every message, validated with pydantic (tensors are checked by the codec)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator

from shared.wire import GROUP_NAME_PATTERN, GROUPS_PROTOCOL, MAX_GROUPS

__all__ = [
    "MAX_METRICS",
    "MAX_NUM_EXAMPLES",
    "ClientId",
    "ErrorBody",
    "GroupName",
    "MetricName",
    "MetricValue",
    "Phase",
    "ReceiveReply",
    "RegisterReply",
    "RegisterRequest",
    "UpdateHeader",
]

# Above this a client's example count is absurd (and would swamp every other client).
MAX_NUM_EXAMPLES = 1_000_000_000
MAX_METRICS = 32  # metrics per update; each is kept in the round's /history row

MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")]
MetricValue = Annotated[float, Field(allow_inf_nan=False)]

ClientId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", strict=True)
]
GroupName = Annotated[str, StringConstraints(pattern=GROUP_NAME_PATTERN, strict=True)]
Phase = Literal["waiting", "training", "aggregating", "finished"]


class UpdateHeader(BaseModel):
    """Every field of a POST /receive message except the weights."""

    model_config = ConfigDict(extra="forbid", strict=True)

    protocol: StrictInt
    client_id: ClientId
    round: Annotated[StrictInt, Field(ge=1)]
    num_examples: Annotated[StrictInt, Field(ge=1, le=MAX_NUM_EXAMPLES)]
    weights: dict[str, Any]
    metrics: Annotated[dict[MetricName, MetricValue], Field(max_length=MAX_METRICS)] = {}
    # Protocol 2 only: group name -> raw weights-like map (decoded by `wire.decode_groups`).
    groups: Annotated[dict[GroupName, dict[str, Any]], Field(max_length=MAX_GROUPS)] = {}
    # Compression: the weights are trained - global, float32 ones possibly encoded maps.
    delta: bool = False

    @model_validator(mode="after")
    def _groups_need_protocol_2(self) -> UpdateHeader:
        if "groups" in self.model_fields_set and self.protocol != GROUPS_PROTOCOL:
            raise ValueError(
                f"groups are allowed only with protocol {GROUPS_PROTOCOL}, not {self.protocol}"
            )
        return self


class RegisterRequest(BaseModel):
    """Body of POST /register."""

    model_config = ConfigDict(extra="forbid")

    client_id: ClientId
    num_examples: Annotated[StrictInt, Field(ge=1, le=MAX_NUM_EXAMPLES)] | None = None


class RegisterReply(BaseModel):
    """Answer to POST /register."""

    client_id: str
    registered: bool
    round: int
    phase: Phase
    num_rounds: int


class ReceiveReply(BaseModel):
    """Answer to an accepted (or duplicate) POST /receive."""

    accepted: bool
    duplicate: bool
    round: int
    received: int
    needed: int


class ErrorBody(BaseModel):
    """Every error answer: a machine-readable code and a sentence for people."""

    model_config = ConfigDict(extra="allow")  # e.g. "tensor", or the current "round"

    error: str
    detail: str
