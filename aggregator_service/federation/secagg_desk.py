"""The secure-aggregation requests, checked once and recorded in the round attempt's state.

Each method takes the state's one lock, checks the (round, attempt) and the stage, and
records the post; a repeated post with the same content is a duplicate (200), with other
content a conflict (409). Folding a masked vector (one uint32 add per value) is the only
array work done under the lock.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from aggregator_service.federation.secagg_round import Advertised, SecAggRound, stage_view
from aggregator_service.federation.state import FederationState, RoundState, UpdateRecord
from shared.errors import Conflict, InvalidUpdate
from shared.secagg.messages import (
    KeysRequest,
    MaskedHeader,
    PostReply,
    SharesReply,
    SharesRequest,
    Stage,
    StageReply,
    UnmaskRequest,
)
from shared.secagg.shamir import decode_share

__all__ = ["SecAggDesk"]


class SecAggDesk:
    """The secure-aggregation requests, checked and recorded against the federation's state."""

    def __init__(self, state: FederationState) -> None:
        self.state = state

    def advertise(self, request: KeysRequest) -> PostReply:
        """Record a selected client's public keys (stage `keys`)."""
        with self.state.changed:
            current, secagg = self._attempt(request.client_id, request.round, request.attempt)
            if request.client_id not in current.selected:
                raise Conflict(
                    "not_selected",
                    f"client {request.client_id!r} is not selected for round "
                    f"{current.server_round}",
                    round=current.server_round,
                )
            keys = Advertised(request.c_pk, request.s_pk, request.b_commit)
            known = secagg.keys.get(request.client_id)
            if known is not None:
                return self._repeat(current, known == keys, "its keys")
            self._expect(secagg, "keys")
            taken = {k for other in secagg.keys.values() for k in (other.c_pk, other.s_pk)}
            if keys.c_pk == keys.s_pk or {keys.c_pk, keys.s_pk} & taken:
                raise InvalidUpdate(
                    "invalid_secagg",
                    "c_pk and s_pk must be two keys of this client's own, advertised by no one "
                    "else in this round attempt",
                )
            secagg.keys[request.client_id] = keys
            self.state.changed.notify_all()
            return self._accepted(current)

    def post_shares(self, request: SharesRequest) -> PostReply:
        """Record a participant's sealed shares, one per neighbour (stage `shares`)."""
        sender = request.client_id
        digest = hashlib.sha256(
            b"".join(f"{r}|".encode() + s for r, s in sorted(request.shares.items()))
        ).digest()
        with self.state.changed:
            current, secagg = self._attempt(sender, request.round, request.attempt)
            self._participant(secagg, sender)
            if sender in secagg.share_digests:
                return self._repeat(current, secagg.share_digests[sender] == digest, "its shares")
            self._expect(secagg, "shares")
            expected = secagg.graph[sender]
            if set(request.shares) != expected:
                missing = sorted(expected - set(request.shares))
                extra = sorted(set(request.shares) - expected)
                raise InvalidUpdate(
                    "invalid_secagg",
                    f"shares must go to exactly the {len(expected)} neighbours of "
                    f"{sender!r}: missing {missing[:5]}, not neighbours {extra[:5]}",
                )
            for receiver, sealed in request.shares.items():
                secagg.sealed.setdefault(receiver, {})[sender] = sealed
            secagg.share_digests[sender] = digest
            self.state.changed.notify_all()
            return self._accepted(current)

    def shares_for(self, client_id: str, server_round: int, attempt: int) -> SharesReply:
        """Return the sealed shares addressed to `client_id` (from stage `masked` on)."""
        with self.state.lock:
            current, secagg = self._attempt(client_id, server_round, attempt)
            if client_id not in secagg.masking:
                raise Conflict(
                    "not_participant",
                    f"client {client_id!r} did not send its shares in round "
                    f"{current.server_round} attempt {current.attempt}"
                    if secagg.masking
                    else "the shares stage is still open",
                    round=current.server_round,
                )
            sealed = secagg.sealed.get(client_id, {})
            shares = {s: sealed[s] for s in secagg.masking if s in sealed}
            return SharesReply(round=current.server_round, attempt=current.attempt, shares=shares)

    def fold_masked(
        self, header: MaskedHeader, masked: np.ndarray, weight: float, nbytes: int
    ) -> PostReply:
        """Add a participant's masked vector to the round's masked sum (stage `masked`)."""
        client_id = header.client_id
        digest = hashlib.sha256(masked.tobytes()).digest()
        with self.state.changed:
            current, secagg = self._attempt(client_id, header.round, header.attempt)
            if client_id in secagg.masked_digests:
                same = secagg.masked_digests[client_id] == digest
                return self._repeat(current, same, "its masked vector")
            self._expect(secagg, "masked")
            if client_id not in secagg.masking:
                raise Conflict(
                    "not_participant",
                    f"client {client_id!r} sent no shares in round {current.server_round} "
                    f"attempt {current.attempt}: its masked vector cannot be unmasked",
                    round=current.server_round,
                )
            if secagg.masked_sum is None:
                secagg.masked_sum = np.zeros(masked.size, np.uint32)
            np.add(secagg.masked_sum, masked, out=secagg.masked_sum)
            secagg.masked_digests[client_id] = digest
            secagg.weights[client_id] = weight
            current.received[client_id] = UpdateRecord(
                client_id, header.num_examples, dict(header.metrics), nbytes
            )
            self.state.counters.updates_accepted += 1
            self.state.counters.bytes_in += nbytes
            self.state.changed.notify_all()
            return self._accepted(current)

    def unmask(self, request: UnmaskRequest) -> PostReply:
        """Record a survivor's revealed shares (stage `unmask`)."""
        holder = request.client_id
        with self.state.changed:
            current, secagg = self._attempt(holder, request.round, request.attempt)
            if holder not in secagg.survivors and secagg.stage in ("unmask", "closed"):
                raise Conflict(
                    "not_survivor",
                    f"client {holder!r} has no masked vector in this round's sum",
                    round=current.server_round,
                )
            if holder in secagg.unmasked_by:
                return self._repeat(current, self._same_reveal(secagg, request), "its shares")
            self._expect(secagg, "unmask")
            owners = secagg.owners_held_by(holder)
            wanted_b = {o for o in owners if o in secagg.survivors}
            wanted_sk = {o for o in owners if o in secagg.dropped}
            for kind, got, wanted in (
                ("b_shares", request.b_shares, wanted_b),
                ("sk_shares", request.sk_shares, wanted_sk),
            ):
                if extra := sorted(set(got) - wanted):
                    raise InvalidUpdate(
                        "invalid_secagg",
                        f"{kind} may hold only shares of {sorted(wanted)[:8]} ({len(wanted)} "
                        f"clients), not of {extra[:8]} ({len(extra)})",
                    )
            try:
                b = {o: decode_share(s) for o, s in request.b_shares.items()}
                sk = {o: decode_share(s) for o, s in request.sk_shares.items()}
            except ValueError as exc:
                raise InvalidUpdate("invalid_secagg", f"a share is invalid: {exc}") from None
            for owner, value in b.items():
                secagg.b_shares.setdefault(owner, {})[holder] = value
            for owner, value in sk.items():
                secagg.sk_shares.setdefault(owner, {})[holder] = value
            secagg.unmasked_by.add(holder)
            self.state.changed.notify_all()
            return self._accepted(current)

    def view(self) -> StageReply:
        """Return the current attempt's stage and what its clients need."""
        with self.state.lock:
            current = self.state.round
            return stage_view(
                current.server_round,
                current.attempt,
                current.secagg,
                open_=current.phase == "training",
                num_neighbours=self.state.config.secagg.num_neighbours,
            )

    # ------------------------------------------------------------------ checks

    def _attempt(
        self, client_id: str, server_round: int, attempt: int
    ) -> tuple[RoundState, SecAggRound]:
        """Return the round and its secagg stage if (round, attempt) is the current one."""
        current = self.state.round
        if client_id in self.state.clients:
            self.state.clients[client_id].last_seen = time.monotonic()
        secagg = current.secagg
        if secagg is None or current.phase != "training":
            raise Conflict(
                "round_closed",
                f"no secure-aggregation round is open (round {current.server_round} is "
                f"{current.phase})",
                round=current.server_round,
                attempt=current.attempt,
            )
        if (server_round, attempt) != (current.server_round, current.attempt):
            raise Conflict(
                "stale_attempt",
                f"message for round {server_round} attempt {attempt}; the current one is "
                f"round {current.server_round} attempt {current.attempt}",
                round=current.server_round,
                attempt=current.attempt,
            )
        return current, secagg

    @staticmethod
    def _participant(secagg: SecAggRound, client_id: str) -> None:
        if secagg.stage != "keys" and client_id not in secagg.participants:
            raise Conflict(
                "not_participant",
                f"client {client_id!r} did not advertise keys in this round attempt",
            )

    @staticmethod
    def _expect(secagg: SecAggRound, stage: Stage) -> None:
        if secagg.stage != stage:
            raise Conflict(
                "wrong_stage",
                f"this message belongs to stage {stage!r}; the round attempt is in stage "
                f"{secagg.stage!r}",
                stage=secagg.stage,
            )

    @staticmethod
    def _same_reveal(secagg: SecAggRound, request: UnmaskRequest) -> bool:
        holder = request.client_id
        b = {o: s[holder] for o, s in secagg.b_shares.items() if holder in s}
        sk = {o: s[holder] for o, s in secagg.sk_shares.items() if holder in s}
        try:
            sent_b = {o: decode_share(s) for o, s in request.b_shares.items()}
            sent_sk = {o: decode_share(s) for o, s in request.sk_shares.items()}
        except ValueError:
            return False
        return (b, sk) == (sent_b, sent_sk)

    def _repeat(self, current: RoundState, same: bool, what: str) -> PostReply:
        """Answer a repeated post: a duplicate if identical, else a conflict."""
        if not same:
            raise Conflict(
                "already_posted",
                f"this client already posted {what} for round {current.server_round} attempt "
                f"{current.attempt}, with different content",
                round=current.server_round,
            )
        reply = self._accepted(current)
        return reply.model_copy(update={"duplicate": True})

    @staticmethod
    def _accepted(current: RoundState) -> PostReply:
        assert current.secagg is not None
        return PostReply(
            accepted=True,
            duplicate=False,
            round=current.server_round,
            attempt=current.attempt,
            stage=current.secagg.stage,
        )
