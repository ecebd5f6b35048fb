"""A client algorithm's state on disk: one .npz file per algorithm, a directory per client.

The files hold plain arrays (numpy's .npz: a zip of .npy files) and are read with
`allow_pickle=False`, so a state file can never run code. Each save writes a temporary
file in the same directory, fsyncs it, then renames it over the old one (`os.replace`)
and fsyncs the directory: a crash leaves the old state or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from shared.errors import ConfigError

__all__ = ["StateStore"]


class StateStore:
    """The state files of one client: ``<state_dir>/<client_id>/<algorithm>.npz``."""

    def __init__(self, state_dir: Path, client_id: str) -> None:
        self.directory = state_dir / client_id

    def path(self, algorithm: str) -> Path:
        """Return the file holding `algorithm`'s state."""
        return self.directory / f"{algorithm}.npz"

    def load(self, algorithm: str) -> dict[str, np.ndarray]:
        """Return the saved state of `algorithm` (empty when none was saved)."""
        path = self.path(algorithm)
        try:
            with np.load(path, allow_pickle=False) as saved:
                return {name: saved[name] for name in saved.files}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ConfigError(f"cannot read the algorithm state {path}: {exc}") from None

    def save(self, algorithm: str, state: Mapping[str, np.ndarray]) -> None:
        """Replace `algorithm`'s saved state by `state` atomically; an empty state removes it."""
        path = self.path(algorithm)
        if not state:
            path.unlink(missing_ok=True)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.asarray(array) for name, array in state.items()}
        for name, array in arrays.items():
            if array.dtype.hasobject:
                raise ValueError(f"state {name!r}: object arrays cannot be saved (no pickle)")
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=f".{algorithm}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                _write_npz(file, arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)


def _write_npz(file: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as an .npz archive (what `np.savez` writes, whatever the names)."""
    with zipfile.ZipFile(file, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
