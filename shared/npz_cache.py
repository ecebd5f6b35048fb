"""Parsed arrays kept on disk as .npz: written atomically, read without pickle.

Every worker of a federation loads the same dataset; parsing it once and reading the
arrays back afterwards saves each of them the parse. A missing, unreadable or unwritable
cache only means parsing again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["read_npz", "write_npz"]

_log = logging.getLogger(__name__)


def read_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Return the arrays `names` from `path`, or None if it is missing or unreadable."""
    try:
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in names}  # the file is closed on any error
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        _log.warning("ignoring the unreadable cache %s: %s", path, exc)
        return None


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` through a temp file and a rename; readers never see half a file."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as file:
            np.savez(file, allow_pickle=False, **arrays)
        os.replace(temp, path)
    except OSError as exc:
        _log.info("not caching %s: %s", path, exc)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
