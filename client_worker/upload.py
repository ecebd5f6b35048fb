"""An update's body, streamed from the model's memory instead of joined into one buffer.

`encode_chunks` gives the message as pieces whose tensor data are views of the trained
weights. `UploadBody` sends them in pieces of at most `PIECE_BYTES`, small pieces (the
msgpack framing between tensors) gathered together, so that a 45 MB update needs no
45 MB buffer of its own: the worker's peak memory stays one model smaller, and the
bytes are copied once, into the socket. The body can be iterated again, so a retried
POST sends it again; the weights must not change until the POST is done.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from shared.wire import encode_chunks

__all__ = ["PIECE_BYTES", "UploadBody"]

PIECE_BYTES = 1 << 20  # the largest piece handed to the HTTP client at once
_SMALL = 64 * 1024  # pieces under this size are gathered before they are sent


class UploadBody:
    """A msgpack message as a re-iterable sequence of byte pieces, with its total length."""

    def __init__(self, message: Mapping[str, Any]) -> None:
        self._chunks = [memoryview(chunk).cast("B") for chunk in encode_chunks(message)]
        self.nbytes = sum(chunk.nbytes for chunk in self._chunks)

    def __len__(self) -> int:
        return self.nbytes

    def __iter__(self) -> Iterator[bytes | memoryview]:
        """Yield the message's bytes in order, in pieces of at most `PIECE_BYTES`."""
        pending = bytearray()
        for chunk in self._chunks:
            if chunk.nbytes < _SMALL and len(pending) + chunk.nbytes <= PIECE_BYTES:
                pending += chunk
                continue
            if pending:
                yield bytes(pending)
                pending.clear()
            for start in range(0, chunk.nbytes, PIECE_BYTES):
                yield chunk[start : start + PIECE_BYTES]
        if pending:
            yield bytes(pending)
