"""Who masks with whom: SecAgg's complete graph, or SecAgg+'s k-regular Harary graph.

The round's participants are ordered by SHA-256("tributary-secagg/v1|graph|<seed>|<round>|
<attempt>|<client id>") (ties, impossible in practice, by id); with k neighbours (k even)
each client is linked to the k/2 before and the k/2 after it in that ring. k = None, or
k >= n - 1, links every pair (SecAgg). The order is public and fixed by the round, so
every client computes the same graph; the aggregator does not choose it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from shared.secagg.keys import PROTOCOL_LABEL

__all__ = ["holders", "neighbours", "share_positions"]


def neighbours(
    participants: Sequence[str],
    num_neighbours: int | None,
    *,
    seed: int,
    server_round: int,
    attempt: int,
) -> dict[str, frozenset[str]]:
    """Return each participant's neighbours (never itself)."""
    members = sorted(set(participants))
    n = len(members)
    if num_neighbours is None or num_neighbours >= n - 1:
        return {c: frozenset(members) - {c} for c in members}
    if num_neighbours < 2 or num_neighbours % 2:
        raise ValueError(f"num_neighbours must be even and at least 2, got {num_neighbours}")

    def key(client_id: str) -> tuple[bytes, str]:
        text = f"{PROTOCOL_LABEL}|graph|{seed}|{server_round}|{attempt}|{client_id}"
        return hashlib.sha256(text.encode()).digest(), client_id

    ring = sorted(members, key=key)
    half = num_neighbours // 2
    linked: dict[str, frozenset[str]] = {}
    for p, client_id in enumerate(ring):
        offsets = [d for d in range(-half, half + 1) if d]
        linked[client_id] = frozenset(ring[(p + d) % n] for d in offsets)
    return linked


def holders(graph: dict[str, frozenset[str]], owner: str) -> frozenset[str]:
    """Return who holds shares of `owner`'s secrets: its neighbours and itself."""
    return graph[owner] | {owner}


def share_positions(participants: Sequence[str]) -> dict[str, int]:
    """Return each participant's Shamir x: its 1-based position among the sorted ids."""
    return {c: i + 1 for i, c in enumerate(sorted(set(participants)))}
