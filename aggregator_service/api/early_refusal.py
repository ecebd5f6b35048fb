"""Not journalling an upload that is sure to be refused, told from the body's first bytes.

A large update is written to the journal while it arrives (journal_stream.py). A re-post
of an update already accepted (a client retrying after a timeout) or an update for a
round already over or being aggregated is refused once the whole body is in, but its
45 MB would have gone to disk first. Workers put the message's header fields
(protocol, client_id, round, num_examples) before the weights, so `EarlyRefusal` reads
them from the body's first bytes and, if the state says the update cannot be accepted any
more, stops following the body before anything is written.

This is only about what is written while the body arrives: the whole body is still read
and goes through the ordinary checks, which alone decide the reply. If they did accept an
update screened out here (they cannot: every refusal tested is final), the store would
write its body whole, as it does for bodies it did not follow.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack

from aggregator_service.store.journal_stream import StreamedBody

__all__ = ["PREFIX_BYTES", "EarlyRefusal", "RefusalCheck", "leading_fields"]

PREFIX_BYTES = 64 * 1024  # the header fields must be within this many first bytes
_HEADER_FIELDS = frozenset({"protocol", "client_id", "round", "num_examples"})


class RefusalCheck(Protocol):
    """What the federation's state tells about an update before its body is in."""

    def surely_refused(self, client_id: str, server_round: int) -> bool:
        """Whether an update of `client_id` for `server_round` can no longer be accepted."""


def leading_fields(prefix: bytes | bytearray | memoryview) -> tuple[dict[str, Any], bool]:
    """Return the header fields at the start of a msgpack map, and whether that is all of them.

    Fields are read in order until the first other key (the weights, in workers' bodies),
    the map's end or the prefix's end. Complete is False if the prefix ended first, so a
    longer one may tell more. A prefix that is not a msgpack map gives ({}, True).
    """
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(PREFIX_BYTES, len(prefix)))
    unpacker.feed(prefix)
    fields: dict[str, Any] = {}
    try:
        size = unpacker.read_map_header()
        for _ in range(size):
            key = unpacker.unpack()
            if not isinstance(key, str) or key not in _HEADER_FIELDS:
                return fields, True
            fields[key] = unpacker.unpack()
    except msgpack.OutOfData:
        return fields, False
    except (ValueError, TypeError, msgpack.UnpackException):  # not a map; decoding will say
        return fields, True
    return fields, True


class EarlyRefusal:
    """A body watcher (body.py) that stops `streamed` once the header shows a sure refusal."""

    def __init__(self, streamed: StreamedBody, state: RefusalCheck) -> None:
        self._streamed = streamed
        self._state = state
        self._buffer: memoryview | None = None
        self._decided = False
        self.refused = False  # the body is no longer followed: it is not to be accepted

    def start(self, buffer: memoryview) -> None:
        """The body goes into `buffer`; `streamed` follows it once the header is read."""
        self._buffer = buffer
        self._streamed.start(buffer)

    def advance(self, filled: int) -> None:
        """Read the header as soon as it is in; pass the progress on unless refused."""
        if not self._decided:
            self._decided = self._decide(filled)
            if not self._decided:
                return  # nothing is written before the header is read
        if not self.refused:
            self._streamed.advance(filled)

    def _decide(self, filled: int) -> bool:
        """Whether the header could be read from the first `filled` bytes (and was acted on)."""
        if self._buffer is None:
            return True
        fields, complete = leading_fields(self._buffer[: min(filled, PREFIX_BYTES)])
        client_id, server_round = fields.get("client_id"), fields.get("round")
        if isinstance(client_id, str) and type(server_round) is int:
            if self._state.surely_refused(client_id, server_round):
                self.refused = True
                self._streamed.discard()  # before any step: none starts before the header
            return True
        return complete or filled >= PREFIX_BYTES
