"""Tensors in the safetensors format: the checkpoint files of the state dir.

Layout (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length
N, N bytes of JSON (``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``), then the tensors' little-endian bytes, back to back, with
offsets counted from the end of the header. Any safetensors reader loads these files
(``safetensors.numpy.load_file``); this module needs numpy only.

The header lists the tensors in the mapping's order and `read_safetensors` returns them in
the header's order. The data is laid out by decreasing item size after a header padded to
a multiple of 8 bytes, so every tensor starts aligned to its item size and is read in
place, without a copy. A file is checked completely before any tensor is built from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

__all__ = ["read_safetensors", "write_safetensors"]

_CODES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_NAMES = {dtype: code for code, dtype in _CODES.items()}
_METADATA = "__metadata__"
_MAX_HEADER = 100_000_000  # bytes; the limit the reference implementation sets
_ALIGN = 8


def write_safetensors(
    file: BinaryIO, weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Write `weights` (and string `metadata`) to `file` in the safetensors format."""
    if _METADATA in weights:
        raise ValueError(f"a tensor cannot be named {_METADATA!r}: the format reserves it")
    arrays = {name: _little_endian(name, value) for name, value in weights.items()}
    # Largest items first (a stable sort: ties keep their order), so each starts aligned.
    layout = sorted(arrays, key=lambda name: -arrays[name].dtype.itemsize)
    offsets: dict[str, list[int]] = {}
    position = 0
    for name in layout:
        offsets[name] = [position, position + arrays[name].nbytes]
        position += arrays[name].nbytes
    header: dict[str, Any] = {}
    if metadata:
        header[_METADATA] = {str(key): str(value) for key, value in metadata.items()}
    for name, array in arrays.items():
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": offsets[name],
        }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % _ALIGN)  # spaces: the format's own padding
    file.write(len(text).to_bytes(8, "little"))
    file.write(text)
    for name in layout:
        file.write(arrays[name].reshape(-1).view(np.uint8).data)  # the array's own memory


def read_safetensors(data: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """Return the tensors of a safetensors file held in `data`, as views of it where aligned.

    Views of a writable buffer (a bytearray) are writable. Raise ValueError naming what is
    wrong if `data` is not a complete, consistent safetensors file.
    """
    buffer = memoryview(data).cast("B")
    header, start = _header(buffer)
    body = buffer[start:]
    entries = {name: _entry(name, spec, len(body)) for name, spec in header.items()}
    _check_coverage(entries, len(body))
    tensors: dict[str, np.ndarray] = {}
    for name, (dtype, shape, begin, end) in entries.items():
        array = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
        tensors[name] = array if array.flags.aligned else array.copy()
    return tensors


def _little_endian(name: str, value: np.ndarray) -> np.ndarray:
    array = np.asarray(value, order="C")  # keeps 0-d arrays 0-d
    dtype = array.dtype.newbyteorder("<")  # the file's byte order, whatever the host's
    if dtype not in _NAMES:
        raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no safetensors code")
    return array.astype(dtype, copy=False)


def _header(buffer: memoryview) -> tuple[dict[str, Any], int]:
    """Parse the JSON header; return it without metadata, and where the data starts."""
    if len(buffer) < 8:
        raise ValueError(f"safetensors file of {len(buffer)} bytes is shorter than its header")
    size = int.from_bytes(buffer[:8], "little")
    if size > _MAX_HEADER or 8 + size > len(buffer):
        raise ValueError(f"safetensors header of {size} bytes does not fit the file")
    try:
        header = json.loads(bytes(buffer[8 : 8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    metadata = header.pop(_METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("safetensors __metadata__ must map strings to strings")
    return header, 8 + size


def _entry(name: str, spec: Any, body_size: int) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    """Check one header entry; return its dtype, shape and byte range in the data."""
    if not isinstance(spec, dict):
        raise ValueError(f"tensor {name!r}: header entry is not an object")
    code = spec.get("dtype")
    dtype = _CODES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise ValueError(f"tensor {name!r}: unsupported dtype {code!r}")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ValueError(f"tensor {name!r}: bad shape {shape!r:.80}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ValueError(f"tensor {name!r}: bad data_offsets {offsets!r:.80}")
    begin, end = offsets
    if not begin <= end <= body_size:
        raise ValueError(f"tensor {name!r}: data_offsets {offsets} outside {body_size} bytes")
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"tensor {name!r}: {end - begin} bytes do not hold shape {shape}")
    return dtype, tuple(shape), begin, end


def _check_coverage(entries: Mapping[str, tuple[Any, Any, int, int]], body_size: int) -> None:
    """The tensors' byte ranges must tile the data exactly: no gap, no overlap, no tail."""
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != position:
            raise ValueError(f"tensor {name!r}: data starts at {begin}, expected {position}")
        position = end
    if position != body_size:
        raise ValueError(f"safetensors data has {body_size - position} bytes no tensor names")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
