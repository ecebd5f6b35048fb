"""Error feedback: what lossy encoding drops from a delta is added to the next one.

A client keeps a residual per tensor (zeros at first) and sends encode(delta + residual);
the new residual is (delta + residual) - decode(encode(delta + residual)). Summed over
rounds, the decoded updates plus the last residual equal the sum of the true deltas, so
nothing is lost for good (Seide et al. 2014; Stich et al. 2018, "Sparsified SGD with
memory"). `ErrorFeedback` keeps the residuals by tensor name and saves them to an .npz
file, so that a worker can keep them in its state dir across restarts.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shared.compression.codec import decode_tensor, encode_tensor
from shared.compression.spec import CompressionSpec, plan
from shared.errors import SpecMismatch, StoreError
from shared.wire_tensors import TensorSpec, spec_of

__all__ = ["ErrorFeedback", "with_feedback"]


def with_feedback(
    name: str,
    delta: np.ndarray,
    residual: np.ndarray,
    spec: CompressionSpec,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Return the map of encode(delta + residual) and the new residual, what it lost."""
    target = (delta + residual).astype(np.float32, copy=False)
    wire_map = encode_tensor(name, target, spec, rng)
    decoded = decode_tensor(name, wire_map, TensorSpec(target.shape, "float32"))
    return wire_map, target - decoded


class ErrorFeedback:
    """The residuals of one client's compressed tensors, by tensor name."""

    def __init__(self, residuals: Mapping[str, np.ndarray] | None = None) -> None:
        self.residuals: dict[str, np.ndarray] = dict(residuals or {})

    def encode_update(
        self,
        deltas: Mapping[str, np.ndarray],
        compression: CompressionSpec | None,
        rng: np.random.Generator | None = None,
    ) -> dict[str, Any]:
        """Return the update's tensors as `plan` says, compressed ones with their residuals."""
        out: dict[str, Any] = {}
        residuals: dict[str, np.ndarray] = {}  # kept only once every tensor is encoded
        for name, encoding in plan(spec_of(deltas), compression).items():
            delta = deltas[name]
            if encoding is None or compression is None:
                out[name] = delta
                continue
            residual = self.residuals.get(name, np.zeros(delta.shape, np.float32))
            if residual.shape != delta.shape:
                raise SpecMismatch(
                    name, f"residual shape {list(residual.shape)} != delta's {list(delta.shape)}"
                )
            out[name], residuals[name] = with_feedback(name, delta, residual, compression, rng)
        self.residuals.update(residuals)
        return out

    def reset(self) -> None:
        """Forget every residual (after a model change, say)."""
        self.residuals.clear()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the residuals to an .npz file, atomically (a temporary file, then rename)."""
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        try:
            with temporary.open("wb") as file:
                with zipfile.ZipFile(file, "w") as archive:  # np.savez, for any tensor name
                    for name, array in self.residuals.items():
                        with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                            np.lib.format.write_array(entry, array, allow_pickle=False)
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(path)
        except OSError as exc:
            raise StoreError(f"cannot write residuals to {path}: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ErrorFeedback:
        """Read residuals saved by `save`: finite float32 arrays only, never pickles."""
        try:
            npz = np.load(path, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz file")
            with npz:
                residuals = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise StoreError(f"cannot read residuals from {path}: {exc}") from exc
        for name, array in residuals.items():
            if array.dtype != np.float32 or not np.isfinite(array).all():
                raise StoreError(f"residual {name!r} in {path} is not a finite float32 array")
        return cls(residuals)
