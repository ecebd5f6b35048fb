"""The update journal: accepted updates kept on disk until their round is checkpointed.

Layout under the state dir::

    updates/12/<digest>.msgpack   accepted updates of round 12 not yet aggregated
    updates/incoming/.<uuid>.tmp  bodies being written while they arrive (journal_stream.py)

plus a row per update in the ``updates`` table of ``run.sqlite3`` (database.py). A file is
written atomically, and only then does a row name it, so a crash leaves at worst an orphan
file that no row points to. The bodies are written by journal.py (direct I/O where
possible) and carry a checksum; a damaged one is skipped when it is read back. File names
are digests, so a client id can never steer a path.

One (round, client) pair is saved at most once: a second `UpdateJournal.save` for it raises
`StoreError` and leaves the first untouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

from aggregator_service.store import files, journal
from aggregator_service.store.database import Database, check_round
from aggregator_service.store.journal_stream import StreamedBody
from shared.errors import StoreError

__all__ = ["UpdateJournal"]

logger = logging.getLogger(__name__)

_TRASH = ".discarded-"  # prefix of update directories being deleted
_INCOMING = "incoming"  # update bodies being written as they arrive (journal_stream.py)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, server_round INTEGER NOT NULL,
    client_id TEXT NOT NULL, num_examples INTEGER NOT NULL, file TEXT NOT NULL,
    sha256 TEXT NOT NULL, UNIQUE (server_round, client_id));
"""


class UpdateJournal:
    """The accepted updates of a run not yet aggregated: files under `directory`, rows in `db`.

    `hashing` computes checksums beside the writes (the store's threads, shut down by it).
    """

    def __init__(self, directory: Path, db: Database, hashing: futures.Executor) -> None:
        self.directory = directory
        self._db = db
        self._hashing = hashing
        self._removers: list[threading.Thread] = []
        (directory / _INCOMING).mkdir(parents=True, exist_ok=True)
        db.create(_SCHEMA)
        _remove_leftovers(directory)

    def stream(self) -> StreamedBody:
        """Return a follower that writes an update body to the journal as it arrives."""
        return StreamedBody(self.directory / _INCOMING, self._hashing)

    def save(
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
        crash may lose it; it is written the same way, direct I/O where possible). `streamed`
        (from `stream`) has followed the body as it arrived: what it wrote is then only
        completed, not written again.
        """
        check_round(server_round)
        round_dir = self.directory / str(server_round)
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
            with self._db.transaction() as db:
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

    def pending(self, server_round: int) -> Iterator[tuple[str, int, memoryview]]:
        """Yield (client_id, num_examples, body) of the round's saved updates by client id.

        Each body is a read-only memory map of its file, checked against its checksum and
        mapped only when its turn comes (so a fold holds one at a time); a lost or damaged
        one is logged and skipped. The order is the clients' ids, never the order of
        arrival, so a round's aggregate does not depend on it.
        """
        rows = self._db.rows(
            "SELECT client_id, num_examples, file, sha256 FROM updates "
            "WHERE server_round = ? ORDER BY client_id",
            (server_round,),
        )
        round_dir = self.directory / str(server_round)
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

    def drop(self, server_round: int) -> None:
        """Forget the round's saved updates (once its checkpoint is written)."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM updates WHERE server_round = ?", (server_round,))
        self._discard(self.directory / str(server_round))

    def drop_through(self, server_round: int) -> None:
        """Forget the saved updates of every round up to `server_round` (all checkpointed)."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM updates WHERE server_round <= ?", (server_round,))
        for round_dir in self.directory.iterdir():
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

    def close(self) -> None:
        """Wait for the deletions in progress (the store closes the database afterwards)."""
        for remover in self._removers:
            remover.join()


def _remove_leftovers(directory: Path) -> None:
    """Delete temp files and half-deleted rounds a crash left behind (no row points to them)."""
    for temp in directory.glob("*/.*.tmp"):
        temp.unlink(missing_ok=True)
    for trash in directory.glob(f"{_TRASH}*"):
        shutil.rmtree(trash, ignore_errors=True)
