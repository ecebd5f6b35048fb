"""Compressed updates: float16, bfloat16, 8- and 4-bit blockwise quantization, top-k.

Each encoding is a pure encode/decode pair over numpy arrays (numpy and msgpack only, no
torch), with its byte layout in docs/protocol.md (*Update encodings*):

    halves.py     f16, bf16      a float32 delta in 2 bytes per element
    blockwise.py  q8, q4         a float32 scale (and min) per block, 8- or 4-bit codes
    topk.py       topk           the k largest magnitudes: varint index gaps and values
    varint.py                    unsigned LEB128, vectorized
    spec.py                      CompressionSpec, and `plan`: which tensors stay plain
    codec.py                     encode, decode, and accumulate any tensor map
    feedback.py                  error feedback: residuals kept by a client
    steps.py                     steps between model versions (download deltas)
    fields.py, decoded.py        reading a map's fields; a validated tensor, whole or in pieces
    errors.py                    EncodingError and UnknownEncoding

A client calls `encode_update` (or `ErrorFeedback.encode_update`); a receiver calls
`decode_update` or `decode_tensor`, or `accumulate_into` to add a tensor into a float64 sum
piece by piece. Seeded generators make stochastic rounding reproducible byte for byte.
"""

from shared.compression.codec import (
    accumulate_into,
    check_update,
    decode_tensor,
    decode_update,
    encode_tensor,
    encode_update,
    is_compressed,
    iter_decoded,
    wire_nbytes,
)
from shared.compression.errors import EncodingError, UnknownEncoding
from shared.compression.feedback import ErrorFeedback, with_feedback
from shared.compression.spec import ENCODINGS, CompressionSpec, plan
from shared.compression.steps import apply_step, step_between

__all__ = [
    "ENCODINGS",
    "CompressionSpec",
    "EncodingError",
    "ErrorFeedback",
    "UnknownEncoding",
    "accumulate_into",
    "apply_step",
    "check_update",
    "decode_tensor",
    "decode_update",
    "encode_tensor",
    "encode_update",
    "is_compressed",
    "iter_decoded",
    "plan",
    "step_between",
    "wire_nbytes",
    "with_feedback",
]
