"""The round loop's side of secure aggregation: when a stage closes, and the sum at the end.

`stage_decision` says whether the current stage waits, advances, or whether the attempt
closes (every needed secret can be rebuilt) or is retried from the keys as a new attempt
(too few clients before a deadline, or too few shares). `advance_stage` fixes what a
closing stage decides (participants and graph, who masks, survivors and dropped).
`summed_deltas` rebuilds the secrets from the revealed shares, checks them against what
their owners committed to (b against its hash, s_sk against s_pk), removes the masks and
dequantizes: the round is known by its sum alone.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Literal

from aggregator_service.federation.secagg_round import SecAggRound
from aggregator_service.strategy import SummedDeltas
from shared.config import ExperimentConfig, round_threshold
from shared.errors import SecAggError
from shared.secagg.graph import holders, neighbours, share_positions
from shared.secagg.keys import KeyPair, commit_seed, round_context
from shared.secagg.masks import unmask_sum
from shared.secagg.shamir import combine
from shared.secagg.vector import split_sum
from shared.wire import TensorSpec

__all__ = ["advance_stage", "rebuild_secrets", "stage_decision", "summed_deltas"]

StageDecision = Literal["wait", "advance", "close", "retry"]
MAX_TRIES = 64  # sets of t shares tried per secret when some revealed share is wrong


def stage_decision(
    secagg: SecAggRound,
    *,
    selected: int,
    min_fit_clients: int,
    close_at_threshold: bool,
    deadline_passed: bool,
) -> tuple[StageDecision, str]:
    """Decide what the current stage does now; the reason is logged on a retry."""
    stage = secagg.stage
    if stage == "keys":
        done, total = len(secagg.keys), selected
    elif stage == "shares":
        done, total = len(secagg.share_digests), len(secagg.participants)
    elif stage == "masked":
        done, total = len(secagg.masked_digests), len(secagg.masking)
    else:
        return _unmask_decision(secagg, deadline_passed)
    enough = done >= min_fit_clients
    if stage == "shares":
        enough = enough and recoverable(secagg, secagg.share_digests, set(secagg.share_digests))
    if stage == "masked":
        enough = enough and recoverable(secagg, secagg.masking, set(secagg.masked_digests))
    if done >= total and enough:
        return "advance", ""
    if (deadline_passed or done >= total) and not enough:
        return "retry", f"stage {stage} ended with {done} of {total} clients, too few"
    if deadline_passed or (stage == "masked" and close_at_threshold and enough):
        return "advance", ""
    return "wait", ""


def _unmask_decision(secagg: SecAggRound, deadline_passed: bool) -> tuple[StageDecision, str]:
    """Close once every needed secret is rebuilt and checked; wait for more shares while a
    wrong one spoils a rebuild and some survivors have not revealed theirs yet."""
    everyone = secagg.unmasked_by >= set(secagg.survivors)
    if unmask_complete(secagg):
        try:
            rebuild_secrets(secagg)
        except SecAggError as exc:
            if deadline_passed or everyone:
                return "retry", str(exc)
            return "wait", ""
        return "close", ""
    if deadline_passed or everyone:
        answered = len(secagg.unmasked_by)
        return "retry", f"only {answered} survivors revealed shares: some secret has fewer than t"
    return "wait", ""


def recoverable(secagg: SecAggRound, masking: Collection[str], survivors: set[str]) -> bool:
    """Whether `survivors` could reveal t shares of every secret a sum over them needs."""
    t = secagg.threshold
    for owner in masking:
        if owner not in survivors and not secagg.graph[owner] & survivors:
            continue  # a dropped client no survivor masked with: nothing to remove
        if len(holders(secagg.graph, owner) & survivors) < t:
            return False
    return True


def unmask_complete(secagg: SecAggRound) -> bool:
    """Whether every secret the sum needs has t revealed shares."""
    t = secagg.threshold
    survivors = set(secagg.survivors)
    if any(len(secagg.b_shares.get(u, {})) < t for u in survivors):
        return False
    return all(
        len(secagg.sk_shares.get(d, {})) >= t for d in secagg.dropped if secagg.graph[d] & survivors
    )


def advance_stage(
    secagg: SecAggRound, config: ExperimentConfig, server_round: int, attempt: int
) -> None:
    """Close the current stage and open the next one (call under the lock)."""
    now = time.monotonic()
    options = config.secagg
    secagg.deadline = now + options.stage_timeout_s
    if secagg.stage == "keys":
        secagg.participants = tuple(sorted(secagg.keys))
        secagg.graph = neighbours(
            secagg.participants,
            options.num_neighbours,
            seed=config.seed,
            server_round=server_round,
            attempt=attempt,
        )
        secagg.threshold = round_threshold(options, len(secagg.participants))
        secagg.stage = "shares"
    elif secagg.stage == "shares":
        secagg.masking = tuple(sorted(secagg.share_digests))
        secagg.deadline = now + config.round_timeout_s  # the clients train in this stage
        secagg.stage = "masked"
    elif secagg.stage == "masked":
        secagg.survivors = tuple(sorted(secagg.masked_digests))
        secagg.dropped = tuple(c for c in secagg.masking if c not in secagg.masked_digests)
        secagg.stage = "unmask"
    if secagg.stage == "unmask":
        secagg.sealed = {}  # delivered while the clients masked; no longer needed


def rebuild_secrets(secagg: SecAggRound) -> None:
    """Rebuild the survivors' self-mask seeds and the dropped clients' mask keys, each
    checked against what its owner advertised (b against b_commit, s_sk against s_pk)."""
    survivors = set(secagg.survivors)
    x = share_positions(secagg.participants)
    t = secagg.threshold
    secagg.self_seeds = {
        owner: _rebuild(
            (owner, "self-mask seed"),
            secagg.b_shares[owner],
            x,
            t,
            check=(commit_seed, secagg.keys[owner].b_commit),
        )
        for owner in secagg.survivors
    }
    secagg.dropped_keys = {
        owner: _rebuild(
            (owner, "mask key"),
            secagg.sk_shares[owner],
            x,
            t,
            check=(_public_of, secagg.keys[owner].s_pk),
        )
        for owner in secagg.dropped
        if secagg.graph[owner] & survivors
    }


def summed_deltas(
    secagg: SecAggRound,
    config: ExperimentConfig,
    spec: Mapping[str, TensorSpec],
    group_specs: Mapping[str, Mapping[str, TensorSpec]],
    *,
    server_round: int,
    attempt: int,
) -> SummedDeltas:
    """Return the round's sum of weighted deltas: its masked sum minus the rebuilt masks."""
    if secagg.masked_sum is None or secagg.self_seeds is None:
        raise SecAggError(f"round {server_round}: no masked sum or no rebuilt secrets")
    total = unmask_sum(
        secagg.masked_sum,
        self_seeds=secagg.self_seeds,
        dropped_keys=secagg.dropped_keys,
        public_keys={c: k.s_pk for c, k in secagg.keys.items()},
        neighbours=secagg.graph,
        context=round_context(server_round, attempt),
        modulus=config.secagg.modulus,
    )
    values = config.secagg.quantizer().dequantize_sum(total, len(secagg.survivors))
    delta_sum, group_sums = split_sum(values, spec, group_specs)
    return SummedDeltas(
        num_clients=len(secagg.survivors),
        total_weight=float(sum(secagg.weights[u] for u in secagg.survivors)),
        delta_sum=delta_sum,
        group_sums=group_sums,
    )


def _rebuild(
    secret_of: tuple[str, str],
    shares: Mapping[str, int],
    x: Mapping[str, int],
    t: int,
    *,
    check: tuple[Callable[[bytes], bytes], bytes],
) -> bytes:
    """Return the secret s with check[0](s) == check[1] that t of `shares` rebuild.

    The first t shares by x are tried, then seeded random sets of t (MAX_TRIES in all),
    so a few wrong shares among more than t are passed over; SecAggError when no set
    rebuilds the committed secret.
    """
    image, expected = check
    points = sorted((x[holder], y) for holder, y in shares.items())
    tries: Iterable[Sequence[tuple[int, int]]] = [points[:t]]
    if len(points) > t:  # then random sets of t, drawn the same way every time
        rng = random.Random(len(points))
        tries = itertools.chain(tries, (rng.sample(points, t) for _ in range(MAX_TRIES - 1)))
    for subset in tries:
        try:
            secret = combine(dict(subset), threshold=t)
        except ValueError:
            continue
        if image(secret) == expected:
            return secret
    owner, what = secret_of
    raise SecAggError(
        f"no {t} of the {len(points)} revealed shares of {owner!r}'s {what} rebuild the "
        "secret it committed to"
    )


def _public_of(private: bytes) -> bytes:
    return KeyPair.from_private_bytes(private).public
