"""The run's SQLite database: one connection in WAL mode, shared by the store's parts.

`RunStore` (checkpoints, history, meta) and `UpdateJournal` (the pending updates) keep
their rows in the same ``run.sqlite3``, through one connection behind one lock: reads
take the lock, writes take it for an ``IMMEDIATE`` transaction that commits or rolls back
as a whole. Every commit is fsynced (``synchronous=FULL``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shared.errors import StoreError

__all__ = ["Database", "check_round"]


class Database:
    """One SQLite connection of the store and the lock that serializes its use."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")

    def create(self, schema: str) -> None:
        """Run `schema`, statements that create the tables of one part if missing."""
        with self._lock:
            self._db.executescript(schema)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Return every row the query `sql` selects."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Yield the connection inside a write transaction: committed whole, or rolled back."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; the database cannot be used afterwards."""
        with self._lock:
            self._db.close()


def check_round(server_round: int) -> None:
    """Refuse a round number that cannot key a row: it must be a non-negative int."""
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 0:
        raise StoreError(f"server_round must be a non-negative int, got {server_round!r}")
