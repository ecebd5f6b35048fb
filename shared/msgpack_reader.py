"""A strict, zero-copy msgpack reader: `bin` values come back as views of the input.

msgpack-python's unpacker copies every `bin` into a new `bytes`; for a 45 MB model that
is a second copy of every tensor. This reader walks the (small) message structure in
Python and hands out `memoryview` slices of the caller's buffer instead, so that
`np.frombuffer` over them touches the weights only once, when they are used.

It is also strict where a server must be: nesting depth is capped, a container cannot
declare more items than bytes remain, map keys must be strings or integers, ext types
and trailing bytes are refused. Every problem raises `MalformedMessage`.
"""

from __future__ import annotations

import struct
from typing import Any

from shared.errors import MalformedMessage

__all__ = ["unpack"]

MAX_DEPTH = 32

# type byte -> (kind, struct format of the length or value that follows)
_CODES: dict[int, tuple[str, str]] = {
    0xC4: ("bin", ">B"),
    0xC5: ("bin", ">H"),
    0xC6: ("bin", ">I"),
    0xCA: ("value", ">f"),
    0xCB: ("value", ">d"),
    0xCC: ("value", ">B"),
    0xCD: ("value", ">H"),
    0xCE: ("value", ">I"),
    0xCF: ("value", ">Q"),
    0xD0: ("value", ">b"),
    0xD1: ("value", ">h"),
    0xD2: ("value", ">i"),
    0xD3: ("value", ">q"),
    0xD9: ("str", ">B"),
    0xDA: ("str", ">H"),
    0xDB: ("str", ">I"),
    0xDC: ("array", ">H"),
    0xDD: ("array", ">I"),
    0xDE: ("map", ">H"),
    0xDF: ("map", ">I"),
}
_CONSTANTS: dict[int, Any] = {0xC0: None, 0xC2: False, 0xC3: True}


def unpack(data: bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one msgpack object that fills `data` exactly; `bin` values are views."""
    reader = _Reader(data, max_depth)
    obj = reader.read(0)
    if reader.pos != len(reader.buf):
        raise MalformedMessage(
            f"{len(reader.buf) - reader.pos} trailing bytes after the msgpack object"
        )
    return obj


class _Reader:
    """Cursor over one buffer."""

    def __init__(self, data: bytes | bytearray | memoryview, max_depth: int) -> None:
        view = memoryview(data)
        if not view.c_contiguous:  # a strided view cannot be sliced into bins; copy it once
            view = memoryview(view.tobytes())
        self.buf = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        self.pos = 0
        self.max_depth = max_depth

    def read(self, depth: int) -> Any:
        """Read the next object."""
        b = self._take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if b <= 0x8F:
            return self._map(b & 0x0F, depth)
        if b <= 0x9F:
            return self._array(b & 0x0F, depth)
        if b <= 0xBF:
            return self._str(b & 0x1F)
        if b in _CONSTANTS:
            return _CONSTANTS[b]
        code = _CODES.get(b)
        if code is None:
            raise MalformedMessage(f"unsupported msgpack type 0x{b:02x} at byte {self.pos - 1}")
        kind, fmt = code
        (value,) = struct.unpack(fmt, self._take(struct.calcsize(fmt)))
        if kind == "value":
            return value
        if kind == "str":
            return self._str(value)
        if kind == "bin":
            return self._take(value)
        if kind == "array":
            return self._array(value, depth)
        return self._map(value, depth)

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise MalformedMessage(f"truncated message: needs {end} bytes, has {len(self.buf)}")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def _str(self, n: int) -> str:
        raw = self._take(n)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"invalid UTF-8 in a string at byte {self.pos - n}") from exc

    def _check_container(self, count: int, depth: int) -> None:
        if depth >= self.max_depth:
            raise MalformedMessage(f"message nested deeper than {self.max_depth} levels")
        remaining = len(self.buf) - self.pos
        if count > remaining:  # every object takes at least one byte
            raise MalformedMessage(
                f"truncated message: a container declares {count} objects, {remaining} bytes remain"
            )

    def _array(self, count: int, depth: int) -> list[Any]:
        self._check_container(count, depth)
        return [self.read(depth + 1) for _ in range(count)]

    def _map(self, count: int, depth: int) -> dict[Any, Any]:
        self._check_container(2 * count, depth)
        out: dict[Any, Any] = {}
        for _ in range(count):
            key = self.read(depth + 1)
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise MalformedMessage(
                    f"map key of type {type(key).__name__}; keys must be str (or int)"
                )
            if key in out:
                raise MalformedMessage(f"duplicate map key {key!r}")
            out[key] = self.read(depth + 1)
        return out
