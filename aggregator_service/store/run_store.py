"""Durable run state in one directory, so the aggregator can resume after a restart.

Layout of ``state_dir``::

    run.sqlite3                   rounds, history, update bookkeeping, meta (database.py)
    checkpoints/round-000012.safetensors  the global model after round 12 (last `keep`)
    updates/                      accepted updates not yet aggregated (updates.py)

Every file is written atomically (files.py): a temp file in the same directory, fsync,
``os.replace``, then an fsync of the directory, and only then a row in SQLite naming it.
A crash therefore leaves at worst an orphan file that no row points to, never a row that
points to half a file. Checkpoints carry their sha256, and `latest_checkpoint` falls back
to the previous good checkpoint when the newest is missing or corrupt. Checkpoints are
safetensors files (tensor_file.py), which any safetensors reader loads; the ``.npz``
checkpoints of older state dirs are still read, with ``allow_pickle=False``. The pending
updates are the store's `updates`, an `UpdateJournal` (updates.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sqlite3
import zipfile
from collections.abc import Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

from aggregator_service.store import files
from aggregator_service.store.database import Database, check_round
from aggregator_service.store.tensor_file import read_safetensors, write_safetensors
from aggregator_service.store.updates import UpdateJournal
from shared.errors import StoreError  # re-exported: defined with the other errors

__all__ = ["SERVER_STATE", "RunStore", "StoreError", "split_server_state"]

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIX = ".safetensors"
SERVER_STATE = "server_state/"  # checkpoint tensors of the strategy, not of the model

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    server_round INTEGER PRIMARY KEY, file TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (server_round INTEGER PRIMARY KEY, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class RunStore:
    """Checkpoints, history and meta of one run, under `state_dir`; its pending updates.

    The updates not yet aggregated are `updates`, an `UpdateJournal` in the same directory
    and database.
    """

    def __init__(self, state_dir: Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise StoreError(f"keep must be at least 1 checkpoint, got {keep}")
        self.state_dir = Path(state_dir)
        self.keep = keep
        self._hashing = futures.ThreadPoolExecutor(4, thread_name_prefix="store-hash")
        try:
            (self.state_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            self._db = Database(self.state_dir / "run.sqlite3")
            self._db.create(_SCHEMA)
            for temp in (self.state_dir / "checkpoints").glob(".*.tmp"):
                temp.unlink(missing_ok=True)  # an interrupted write's: no row points to it
            self.updates = UpdateJournal(self.state_dir / "updates", self._db, self._hashing)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot use state directory {self.state_dir}: {exc}; "
                "pass a writable directory as --state-dir"
            ) from exc

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(
        self,
        server_round: int,
        weights: Mapping[str, np.ndarray],
        server_state: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Atomically store the global model after `server_round` (0: the initial model).

        `server_state` (a strategy's momentum, say) goes in the same file, each tensor
        named with the prefix ``server_state/`` (`split_server_state` takes it apart).
        """
        check_round(server_round)
        if server_state:
            weights = {**weights, **{SERVER_STATE + k: v for k, v in server_state.items()}}
        path = self.state_dir / "checkpoints" / f"round-{server_round:06d}{_CHECKPOINT_SUFFIX}"
        metadata = {"round": str(server_round)}
        try:
            digest = files.write_atomic(
                path, lambda f: write_safetensors(f, weights, metadata), self._hashing
            )
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot write checkpoint {path}: {exc}") from exc
        with self._db.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
                (server_round, path.name, digest),
            )
            stale = db.execute(
                "SELECT server_round, file FROM checkpoints ORDER BY server_round DESC "
                "LIMIT -1 OFFSET ?",
                (self.keep,),
            ).fetchall()
            db.executemany(
                "DELETE FROM checkpoints WHERE server_round = ?", [(r,) for r, _ in stale]
            )
        for _, name in stale:
            (self.state_dir / "checkpoints" / name).unlink(missing_ok=True)

    def latest_checkpoint(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """Return the newest intact checkpoint as (server_round, weights), or None."""
        rows = self._db.rows(
            "SELECT server_round, file, sha256 FROM checkpoints ORDER BY server_round DESC"
        )
        for server_round, name, digest in rows:
            path = self.state_dir / "checkpoints" / name
            try:
                return server_round, _read_checkpoint(path, digest)
            except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, StoreError) as exc:
                logger.warning(
                    "checkpoint of round %d (%s) is unusable (%s); trying an older one",
                    server_round,
                    path,
                    exc,
                )
        return None

    def checkpoints_since(self, first_round: int) -> dict[int, dict[str, np.ndarray]]:
        """Return the intact checkpoints of rounds >= `first_round` (unusable ones are left out)."""
        rows = self._db.rows(
            "SELECT server_round, file, sha256 FROM checkpoints WHERE server_round >= ? "
            "ORDER BY server_round",
            (first_round,),
        )
        found: dict[int, dict[str, np.ndarray]] = {}
        for server_round, name, digest in rows:
            try:
                found[server_round] = _read_checkpoint(
                    self.state_dir / "checkpoints" / name, digest
                )
            except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, StoreError) as exc:
                logger.warning("checkpoint of round %d is unusable (%s)", server_round, exc)
        return found

    # ---------------------------------------------------------------- history, meta

    def append_history(self, row: Mapping[str, Any]) -> None:
        """Record a finished round's row (replacing any earlier row of the same round)."""
        server_round = row.get("round")
        if not isinstance(server_round, int) or isinstance(server_round, bool):
            raise StoreError(f"a history row needs an int 'round', got {server_round!r}")
        text = _to_json(row, what=f"history row of round {server_round}")
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO history VALUES (?, ?)", (server_round, text))

    def drop_history_after(self, server_round: int) -> None:
        """Forget the rows of rounds after `server_round` (their checkpoints were lost)."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM history WHERE server_round > ?", (server_round,))

    def history(self) -> list[dict[str, Any]]:
        """Return every history row, ordered by round."""
        rows = self._db.rows("SELECT row FROM history ORDER BY server_round")
        return [json.loads(text) for (text,) in rows]

    def set_meta(self, key: str, value: Any) -> None:
        """Store a small JSON value under `key`."""
        text = _to_json(value, what=f"meta value {key!r}")
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """Return the value stored under `key`, or `default`."""
        found = self._db.rows("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(found[0][0]) if found else default

    def close(self) -> None:
        """Close the database (after pending deletions); the store cannot be used afterwards."""
        self.updates.close()
        self._hashing.shutdown()
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def split_server_state(
    tensors: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split a checkpoint's tensors into the model's and the strategy's (prefix removed)."""
    model = {k: v for k, v in tensors.items() if not k.startswith(SERVER_STATE)}
    state = {k[len(SERVER_STATE) :]: v for k, v in tensors.items() if k.startswith(SERVER_STATE)}
    return model, state


def _read_checkpoint(path: Path, digest: str) -> dict[str, np.ndarray]:
    """Load a checkpoint whose sha256 must be `digest`, read once (.npz: older state dirs)."""
    data = files.read_whole(path)
    if hashlib.sha256(data).hexdigest() != digest:
        raise StoreError("sha256 does not match the recorded one")
    return files.read_npz(io.BytesIO(data)) if path.suffix == ".npz" else read_safetensors(data)


def _to_json(value: Any, *, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON-serializable: {exc}") from exc
