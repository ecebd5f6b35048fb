"""Durable run state in one directory, so the aggregator can resume after a restart.

Layout of ``state_dir``::

    run.sqlite3                   rounds, history, update bookkeeping, meta (WAL mode)
    checkpoints/round-000012.safetensors  the global model after round 12 (last `keep`)
    updates/12/<digest>.msgpack   accepted updates of round 12 not yet aggregated
    updates/incoming/.<uuid>.tmp  bodies being written while they arrive (journal_stream.py)

Every file is written atomically (files.py): a temp file in the same directory, fsync,
``os.replace``, then an fsync of the directory, and only then a row in SQLite naming it.
A crash therefore leaves at worst an orphan file that no row points to, never a row that
points to half a file. Checkpoints carry their sha256, and `latest_checkpoint` falls back
to the previous good checkpoint when the newest is missing or corrupt. Updates are written
by journal.py (direct I/O where possible) and carry a checksum; a damaged one is skipped.
Checkpoints are safetensors files (tensor_file.py), which any safetensors reader loads;
the ``.npz`` checkpoints of older state dirs are still read, with ``allow_pickle=False``.
Update file names are digests, so a client id can never steer a path.

One (round, client) pair is saved at most once: a second `save_update` for it raises
`StoreError` and leaves the first untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import threading
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

from aggregator_service.store import files, journal
from aggregator_service.store.journal_stream import StreamedBody
from aggregator_service.store.tensor_file import read_safetensors, write_safetensors
from shared.errors import StoreError  # re-exported: defined with the other errors

__all__ = ["SERVER_STATE", "RunStore", "StoreError", "split_server_state"]

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIX = ".safetensors"
SERVER_STATE = "server_state/"  # checkpoint tensors of the strategy, not of the model
_TRASH = ".discarded-"  # prefix of update directories being deleted
_INCOMING = "incoming"  # update bodies being written as they arrive (journal_stream.py)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    server_round INTEGER PRIMARY KEY, file TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, server_round INTEGER NOT NULL,
    client_id TEXT NOT NULL, num_examples INTEGER NOT NULL, file TEXT NOT NULL,
    sha256 TEXT NOT NULL, UNIQUE (server_round, client_id));
CREATE TABLE IF NOT EXISTS history (server_round INTEGER PRIMARY KEY, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class RunStore:
    """Checkpoints, pending updates, history and meta of one run, under `state_dir`."""

    def __init__(self, state_dir: Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise StoreError(f"keep must be at least 1 checkpoint, got {keep}")
        self.state_dir = Path(state_dir)
        self.keep = keep
        self._lock = threading.Lock()
        self._removers: list[threading.Thread] = []
        self._hashing = futures.ThreadPoolExecutor(4, thread_name_prefix="store-hash")
        try:
            (self.state_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.state_dir / "updates" / _INCOMING).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.state_dir / "run.sqlite3", check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            _remove_temp_files(self.state_dir)
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
        _check_round(server_round)
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
        with self._transaction() as db:
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
        with self._lock:
            rows = self._db.execute(
                "SELECT server_round, file, sha256 FROM checkpoints ORDER BY server_round DESC"
            ).fetchall()
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

    # --------------------------------------------------------------------- updates

    def stream_update(self) -> StreamedBody:
        """Return a follower that writes an update body to the journal as it arrives."""
        return StreamedBody(self.state_dir / "updates" / _INCOMING, self._hashing)

    def save_update(
        self,
        server_round: int,
        client_id: str,
        num_examples: int,
        body: bytes | bytearray | memoryview,
        streamed: StreamedBody | None = None,
        *,
        durable: bool = True,
    ) -> None:
        """Store an accepted update's raw body; raise StoreError if already saved.

        `durable`: fsync the file and its directory entry before returning (else a machine
        crash may lose it; it is written the same way, direct I/O where possible). `streamed` (from
        `stream_update`) has followed the body as it arrived: what it wrote is then only
        completed, not written again.
        """
        _check_round(server_round)
        round_dir = self.state_dir / "updates" / str(server_round)
        client_digest = hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()
        path = round_dir / f"{client_digest[:32]}-{uuid.uuid4().hex[:12]}.msgpack"
        try:
            if not round_dir.is_dir():
                round_dir.mkdir(exist_ok=True)
                if durable:
                    files.fsync_dir(round_dir.parent)
            written = streamed.finish(body, durable=durable) if streamed is not None else None
            if written is None:
                checksum = self._write_body(body, path, durable=durable)
            else:
                temp, checksum = written
                files.move_into_place(temp, path, durable=durable)
        except OSError as exc:
            raise StoreError(f"cannot write the update of {client_id!r} to {path}: {exc}") from exc
        row = (server_round, client_id, num_examples, path.name, checksum)
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO updates (server_round, client_id, num_examples, file, sha256) "
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                )
        except sqlite3.IntegrityError:
            path.unlink(missing_ok=True)
            raise StoreError(
                f"an update of client {client_id!r} for round {server_round} is already saved"
            ) from None

    def _write_body(
        self, body: bytes | bytearray | memoryview, path: Path, *, durable: bool
    ) -> str:
        """Write `body` to `path` atomically; return its checksum, computed beside the write."""
        checksum = self._hashing.submit(journal.checksum, body)
        try:
            with files.atomic_path(path, durable=durable) as temp:
                journal.write_file(temp, body, durable=durable)
        finally:
            futures.wait([checksum])
        return checksum.result()

    def pending_updates(self, server_round: int) -> Iterator[tuple[str, int, memoryview]]:
        """Yield (client_id, num_examples, body) of the round's saved updates by client id.

        Each body is a read-only memory map of its file, checked against its checksum and
        mapped only when its turn comes (so a fold holds one at a time); a lost or damaged
        one is logged and skipped. The order is the clients' ids, never the order of
        arrival, so a round's aggregate does not depend on it.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT client_id, num_examples, file, sha256 FROM updates "
                "WHERE server_round = ? ORDER BY client_id",
                (server_round,),
            ).fetchall()
        round_dir = self.state_dir / "updates" / str(server_round)
        for client_id, num_examples, name, digest in rows:
            try:
                body = files.map_whole(round_dir / name)
            except OSError as exc:
                logger.warning("update of %r in round %d is lost: %s", client_id, server_round, exc)
                continue
            if not journal.matches(body, digest):
                logger.warning(
                    "update of %r in round %d is corrupt; skipped", client_id, server_round
                )
                continue
            yield client_id, num_examples, body

    def drop_updates(self, server_round: int) -> None:
        """Forget the round's saved updates (once its checkpoint is written)."""
        with self._transaction() as db:
            db.execute("DELETE FROM updates WHERE server_round = ?", (server_round,))
        self._discard(self.state_dir / "updates" / str(server_round))

    def drop_updates_through(self, server_round: int) -> None:
        """Forget the saved updates of every round up to `server_round` (all checkpointed)."""
        with self._transaction() as db:
            db.execute("DELETE FROM updates WHERE server_round <= ?", (server_round,))
        for round_dir in (self.state_dir / "updates").iterdir():
            if round_dir.name.isdigit() and int(round_dir.name) <= server_round:
                self._discard(round_dir)

    def _discard(self, directory: Path) -> None:
        """Move `directory` out of the way at once and delete it on a thread of its own.

        Deleting a round's updates (hundreds of MB in the page cache) takes about 0.1 s;
        the round loop should not wait for it. Leftovers of a crash go at the next start.
        """
        trash = directory.with_name(f"{_TRASH}{directory.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(directory, trash)
        except FileNotFoundError:
            return
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            return
        remover = threading.Thread(
            target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True}, daemon=True
        )
        self._removers = [t for t in self._removers if t.is_alive()] + [remover]
        remover.start()

    # ---------------------------------------------------------------- history, meta

    def append_history(self, row: Mapping[str, Any]) -> None:
        """Record a finished round's row (replacing any earlier row of the same round)."""
        server_round = row.get("round")
        if not isinstance(server_round, int) or isinstance(server_round, bool):
            raise StoreError(f"a history row needs an int 'round', got {server_round!r}")
        text = _to_json(row, what=f"history row of round {server_round}")
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO history VALUES (?, ?)", (server_round, text))

    def drop_history_after(self, server_round: int) -> None:
        """Forget the rows of rounds after `server_round` (their checkpoints were lost)."""
        with self._transaction() as db:
            db.execute("DELETE FROM history WHERE server_round > ?", (server_round,))

    def history(self) -> list[dict[str, Any]]:
        """Return every history row, ordered by round."""
        with self._lock:
            rows = self._db.execute("SELECT row FROM history ORDER BY server_round").fetchall()
        return [json.loads(text) for (text,) in rows]

    def set_meta(self, key: str, value: Any) -> None:
        """Store a small JSON value under `key`."""
        text = _to_json(value, what=f"meta value {key!r}")
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """Return the value stored under `key`, or `default`."""
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if found is None else json.loads(found[0])

    def close(self) -> None:
        """Close the database (after pending deletions); the store cannot be used afterwards."""
        for remover in self._removers:
            remover.join()
        self._hashing.shutdown()
        with self._lock:
            self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


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


def _check_round(server_round: int) -> None:
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 0:
        raise StoreError(f"server_round must be a non-negative int, got {server_round!r}")


def _to_json(value: Any, *, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON-serializable: {exc}") from exc


def _remove_temp_files(state_dir: Path) -> None:
    """Delete temp files an interrupted write left behind (no row ever points to them)."""
    for pattern in ("checkpoints/.*.tmp", "updates/*/.*.tmp"):
        for temp in state_dir.glob(pattern):
            temp.unlink(missing_ok=True)
    for trash in (state_dir / "updates").glob(f"{_TRASH}*"):
        shutil.rmtree(trash, ignore_errors=True)
