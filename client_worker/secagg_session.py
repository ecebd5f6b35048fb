"""One client's part in a secure-aggregation round attempt: keys, shares, masked upload, unmasking.

The keys and the self-mask seed are drawn fresh for each attempt and live in this object
only: a worker that restarts has lost them and counts as dropped for that attempt. The
stages (docs/protocol.md, "Secure aggregation") run around the training: `prepare`
advertises keys, seals shares for the neighbours and opens those sent to this client;
`submit` quantizes, weights and masks the update and posts it; `finish` reveals, for each
client whose shares it holds, the share of b (a survivor) or of s_sk (dropped) — never
both for the same client: asked for both, it refuses (the protocol's safety rule). Shares
that do not open (a sender that sealed garbage) are left out: this client reveals nothing
for that sender, whose secrets the other holders' shares must rebuild.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from client_worker.errors import StopRequested, UpdateRejected
from shared.config import SecAggConfig
from shared.errors import TributaryError
from shared.secagg.graph import holders, neighbours, share_positions
from shared.secagg.keys import (
    KeyPair,
    commit_seed,
    open_shares,
    round_context,
    seal_shares,
    share_aad,
    share_key,
)
from shared.secagg.masks import mask_update
from shared.secagg.messages import (
    KeysRequest,
    SharesReply,
    SharesRequest,
    Stage,
    StageReply,
    UnmaskRequest,
)
from shared.secagg.shamir import SHARE_BYTES, decode_share, encode_share, split

__all__ = ["AttemptEnded", "SecAggChannel", "SecAggSession", "options_of"]

_log = logging.getLogger(__name__)
STAGES: tuple[Stage, ...] = ("keys", "shares", "masked", "unmask", "closed")


class AttemptEnded(TributaryError):
    """The round attempt went on without this client, was retried, or broke the protocol."""


class SecAggChannel(Protocol):
    """How a session reaches the aggregator (the worker's retrying client, or a test's)."""

    def secagg_post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a JSON message to /secagg/<path>; return the JSON answer."""
        ...

    def secagg_get(self, path: str, params: Mapping[str, str | int | float]) -> dict[str, Any]:
        """GET /secagg/<path>; return the JSON answer."""
        ...

    def post_masked(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """POST the msgpack masked-vector message to /secagg/masked; return the JSON answer."""
        ...


def options_of(round_config: Mapping[str, Any]) -> tuple[SecAggConfig, int]:
    """Return the round config's secure-aggregation options and attempt."""
    section = dict(round_config["secagg"])
    attempt = int(section.pop("attempt"))
    return SecAggConfig.model_validate({**section, "enabled": True}), attempt


class SecAggSession:
    """A client's keys, shares and revealed secrets for one round attempt."""

    def __init__(
        self,
        channel: SecAggChannel,
        client_id: str,
        server_round: int,
        round_config: Mapping[str, Any],
        *,
        wait_s: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.channel = channel
        self.client_id = client_id
        self.server_round = server_round
        self.options, self.attempt = options_of(round_config)
        self.seed = int(round_config.get("seed", 0))
        self.context = round_context(server_round, self.attempt)
        self.wait_s = wait_s
        self.stop = stop
        self.c_pair, self.s_pair = KeyPair(), KeyPair()
        self.self_seed = os.urandom(32)
        self.view: StageReply | None = None
        self.graph: dict[str, frozenset[str]] = {}
        self.held: dict[str, tuple[int, int]] = {}  # owner -> (share of b, share of s_sk)
        self.revealed: dict[str, str] = {}  # owner -> "b" or "sk": never both
        self.crypto_seconds = 0.0  # key agreement, sharing and masking

    # ---------------------------------------------------------------- stages

    def prepare(self) -> None:
        """Advertise keys, send sealed shares to the neighbours, open those addressed here."""
        self.advertise()
        self.share()
        self.collect()

    def advertise(self) -> None:
        """Post this attempt's public keys and the commitment to the self-mask seed."""
        keys = KeysRequest(
            client_id=self.client_id,
            round=self.server_round,
            attempt=self.attempt,
            c_pk=self.c_pair.public,
            s_pk=self.s_pair.public,
            b_commit=commit_seed(self.self_seed),
        )
        self.channel.secagg_post("keys", keys.model_dump(mode="json"))

    def share(self) -> None:
        """Wait for stage `shares`; seal and post the shares of b and s_sk for the neighbours."""
        self._send_shares(self._await("shares"))

    def collect(self) -> None:
        """Wait for stage `masked`; fetch and open the shares the neighbours sealed for us."""
        view = self._await("masked")
        if self.client_id not in view.masking:
            raise AttemptEnded("the shares stage closed without this client's shares")
        self._open_shares(view)

    def submit(
        self,
        delta: np.ndarray,
        num_examples: int,
        metrics: Mapping[str, float],
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        """Quantize, weight and mask the update's delta vector, and post it."""
        started = time.perf_counter()
        options = self.options
        weight = 1.0
        if options.weighting == "num_examples":
            assert options.max_num_examples is not None
            if num_examples > options.max_num_examples:
                raise AttemptEnded(
                    f"num_examples {num_examples} exceeds secagg.max_num_examples "
                    f"{options.max_num_examples}"
                )
            weight = num_examples / options.max_num_examples
        quantizer = options.quantizer()
        clipped = np.clip(delta, -options.clipping_range, options.clipping_range)
        quantized = quantizer.quantize(clipped * weight, rng)
        assert self.view is not None
        peers = self._mask_peers(self.view)
        masked = mask_update(
            quantized,
            client_id=self.client_id,
            self_seed=self.self_seed,
            s_pair=self.s_pair,
            peers=peers,
            context=self.context,
            modulus=options.modulus,
        )
        self.crypto_seconds += time.perf_counter() - started
        message = {
            "protocol": 1,
            "client_id": self.client_id,
            "round": self.server_round,
            "attempt": self.attempt,
            "num_examples": num_examples,
            "masked": masked,
            "metrics": {**metrics, "secagg_seconds": self.crypto_seconds},
        }
        return self.channel.post_masked(message)

    def finish(self) -> None:
        """Reveal, per client whose shares this one holds, the share the sum needs."""
        view = self._await("unmask")
        if self.client_id not in view.survivors:
            raise AttemptEnded("this client's masked vector is not in the round's sum")
        survivors, dropped = set(view.survivors), set(view.dropped)
        if survivors & dropped:
            raise AttemptEnded(
                f"refused: {sorted(survivors & dropped)[:5]} listed as both survivors and "
                "dropped; revealing both of a client's secrets would unmask its update"
            )
        b_shares: dict[str, bytes] = {}
        sk_shares: dict[str, bytes] = {}
        for owner, (b_share, sk_share) in sorted(self.held.items()):
            kind = "b" if owner in survivors else "sk" if owner in dropped else None
            if kind is None:
                continue
            if self.revealed.get(owner, kind) != kind:
                raise AttemptEnded(
                    f"refused: asked for the s_sk share of {owner!r} after its b share (or the "
                    "reverse); both would unmask its update"
                )
            self.revealed[owner] = kind
            target = b_shares if kind == "b" else sk_shares
            target[owner] = encode_share(b_share if kind == "b" else sk_share)
        request = UnmaskRequest(
            client_id=self.client_id,
            round=self.server_round,
            attempt=self.attempt,
            b_shares=b_shares,
            sk_shares=sk_shares,
        )
        try:
            self.channel.secagg_post("unmask", request.model_dump(mode="json"))
        except UpdateRejected as exc:
            if exc.reason != "round_closed":
                raise
            _log.info("client %s: the sum was rebuilt without its shares", self.client_id)

    # ---------------------------------------------------------------- steps

    def _send_shares(self, view: StageReply) -> None:
        started = time.perf_counter()
        keys = {p.client_id: p for p in view.participants}
        if keys.get(self.client_id) is None or keys[self.client_id].s_pk != self.s_pair.public:
            raise AttemptEnded("the participant list does not hold this client's keys")
        self.graph = neighbours(
            list(keys),
            self.options.num_neighbours,
            seed=self.seed,
            server_round=self.server_round,
            attempt=self.attempt,
        )
        x = share_positions(list(keys))
        mine = sorted(holders(self.graph, self.client_id))
        xs = [x[h] for h in mine]
        b_split = split(self.self_seed, threshold=view.threshold, xs=xs)
        sk_split = split(self.s_pair.private_bytes(), threshold=view.threshold, xs=xs)
        sealed = {}
        for holder in mine:
            pair = (b_split[x[holder]], sk_split[x[holder]])
            if holder == self.client_id:
                self.held[holder] = pair
                continue
            key = share_key(self.c_pair, keys[holder].c_pk, self.context)
            plaintext = encode_share(pair[0]) + encode_share(pair[1])
            aad = share_aad(self.context, self.client_id, holder)
            sealed[holder] = seal_shares(key, plaintext, aad)
        self.crypto_seconds += time.perf_counter() - started
        request = SharesRequest(
            client_id=self.client_id, round=self.server_round, attempt=self.attempt, shares=sealed
        )
        self.channel.secagg_post("shares", request.model_dump(mode="json"))

    def _open_shares(self, view: StageReply) -> None:
        params: dict[str, str | int | float] = {
            "client_id": self.client_id,
            "round": self.server_round,
            "attempt": self.attempt,
        }
        reply = SharesReply.model_validate(self.channel.secagg_get("shares", params))
        started = time.perf_counter()
        keys = {p.client_id: p for p in view.participants}
        expected = self.graph[self.client_id] & set(view.masking)
        if set(reply.shares) != expected:
            raise AttemptEnded(
                f"expected shares from {len(expected)} neighbours, got {len(reply.shares)}"
            )
        for sender, sealed in reply.shares.items():
            key = share_key(self.c_pair, keys[sender].c_pk, self.context)
            try:
                plain = open_shares(key, sealed, share_aad(self.context, sender, self.client_id))
                pair = decode_share(plain[:SHARE_BYTES]), decode_share(plain[SHARE_BYTES:])
            except ValueError as exc:  # the sender's secrets are rebuilt from other holders
                _log.warning(
                    "client %s: the shares from %s are invalid, left out: %s",
                    self.client_id,
                    sender,
                    exc,
                )
                continue
            self.held[sender] = pair
        self.crypto_seconds += time.perf_counter() - started

    def _mask_peers(self, view: StageReply) -> dict[str, bytes]:
        keys = {p.client_id: p.s_pk for p in view.participants}
        return {p: keys[p] for p in sorted(self.graph[self.client_id] & set(view.masking))}

    def _await(self, stage: Stage) -> StageReply:
        """Long-poll the stage view until `stage`; AttemptEnded if the attempt moved on."""
        seen: Stage | None = None
        while True:
            if self.stop is not None and self.stop.is_set():
                raise StopRequested(f"client {self.client_id}: stop requested")
            params: dict[str, str | int | float] = {
                "client_id": self.client_id,
                "round": self.server_round,
                "attempt": self.attempt,
                "wait": self.wait_s,
            }
            if seen is not None:
                params["stage"] = seen
            view = StageReply.model_validate(self.channel.secagg_get("state", params))
            if (view.round, view.attempt) != (self.server_round, self.attempt):
                raise AttemptEnded(
                    f"round {self.server_round} attempt {self.attempt} is over (now round "
                    f"{view.round} attempt {view.attempt})"
                )
            if view.stage == stage:
                self.view = view
                return view
            if STAGES.index(view.stage) > STAGES.index(stage):
                raise AttemptEnded(f"stage {stage} passed without this client")
            seen = view.stage
