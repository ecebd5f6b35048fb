"""A secure-aggregation round attempt: what the aggregator holds at each of its stages.

The attempt moves through four stages, each closed by the round loop (`secagg_loop.py`):
`keys` (selected clients advertise public keys), `shares` (the participants seal Shamir
shares for their neighbours), `masked` (they train and post masked vectors, folded at
once into one running sum modulo 2^32), `unmask` (survivors reveal the shares the sum
needs), then `closed`. Nothing here is ever an unmasked update: public keys, sealed
shares, the masked sum, and revealed shares of seeds and keys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from shared.secagg.graph import holders
from shared.secagg.messages import ParticipantKeys, Stage, StageReply

__all__ = ["Advertised", "SecAggRound", "stage_view"]


@dataclass(frozen=True)
class Advertised:
    """A client's public keys and the commitment to its self-mask seed."""

    c_pk: bytes
    s_pk: bytes
    b_commit: bytes


@dataclass
class SecAggRound:
    """One attempt of a secure-aggregation round (read and written under the state's lock)."""

    stage: Stage = "keys"
    deadline: float = float("inf")
    keys: dict[str, Advertised] = field(default_factory=dict)
    participants: tuple[str, ...] = ()  # sorted; fixed when `keys` closes
    graph: dict[str, frozenset[str]] = field(default_factory=dict)
    threshold: int = 0
    sealed: dict[str, dict[str, bytes]] = field(default_factory=dict)  # receiver -> sender ->
    share_digests: dict[str, bytes] = field(default_factory=dict)  # sender -> its post's hash
    masking: tuple[str, ...] = ()  # sent shares; fixed when `shares` closes
    masked_sum: np.ndarray | None = None  # uint32, sum of the folded masked vectors
    masked_digests: dict[str, bytes] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # w_i of each folded vector
    survivors: tuple[str, ...] = ()  # fixed when `masked` closes
    dropped: tuple[str, ...] = ()
    b_shares: dict[str, dict[str, int]] = field(default_factory=dict)  # owner -> holder -> y
    sk_shares: dict[str, dict[str, int]] = field(default_factory=dict)
    unmasked_by: set[str] = field(default_factory=set)
    self_seeds: dict[str, bytes] | None = None  # rebuilt when the unmasking stage completes
    dropped_keys: dict[str, bytes] = field(default_factory=dict)  # s_sk of dropped clients

    def owners_held_by(self, holder: str) -> list[str]:
        """Return the clients (who sent shares) of whose secrets `holder` holds shares."""
        return [o for o in self.masking if holder in holders(self.graph, o)]


def stage_view(
    server_round: int,
    attempt: int,
    secagg: SecAggRound | None,
    *,
    open_: bool,
    num_neighbours: int | None,
) -> StageReply:
    """Return what GET /secagg/state answers about a round attempt (call under the lock)."""
    stage: Stage = secagg.stage if secagg is not None and open_ else "closed"
    remaining = None
    if secagg is not None and secagg.deadline != float("inf"):
        remaining = round(max(secagg.deadline - time.monotonic(), 0.0), 3)
    participants = []
    if secagg is not None and stage != "keys":
        participants = [
            ParticipantKeys(client_id=c, c_pk=secagg.keys[c].c_pk, s_pk=secagg.keys[c].s_pk)
            for c in secagg.participants
        ]
    return StageReply(
        round=server_round,
        attempt=attempt,
        stage=stage,
        threshold=secagg.threshold if secagg is not None else 0,
        num_neighbours=num_neighbours,
        deadline_in_s=remaining,
        participants=participants,
        masking=list(secagg.masking) if secagg is not None else [],
        survivors=list(secagg.survivors) if secagg is not None else [],
        dropped=list(secagg.dropped) if secagg is not None else [],
    )
