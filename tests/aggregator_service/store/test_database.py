"""Tests of aggregator_service/store/database.py: the store's SQLite connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator_service.store.database import Database, check_round
from shared.errors import StoreError


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    opened = Database(tmp_path / "run.sqlite3")
    opened.create("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);")
    yield opened
    opened.close()


def test_database_is_in_wal_mode(tmp_path: Path, database: Database) -> None:
    with sqlite3.connect(tmp_path / "run.sqlite3") as db:
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    db.close()
    assert mode == "wal"


def test_a_transaction_commits_whole_or_not_at_all(database: Database) -> None:
    with database.transaction() as db:
        db.execute("INSERT INTO t VALUES (1, 'one')")
        db.execute("INSERT INTO t VALUES (2, 'two')")

    def insert_two() -> None:
        with database.transaction() as db:
            db.execute("INSERT INTO t VALUES (3, 'three')")
            db.execute("INSERT INTO t VALUES (1, 'again')")  # k = 1 is taken: rolled back

    with pytest.raises(sqlite3.IntegrityError):
        insert_two()
    assert database.rows("SELECT k, v FROM t ORDER BY k") == [(1, "one"), (2, "two")]
    assert database.rows("SELECT v FROM t WHERE k = ?", (2,)) == [("two",)]


@pytest.mark.parametrize("server_round", [-1, True, 1.0, "1", None])
def test_check_round_wants_a_non_negative_int(server_round: object) -> None:
    with pytest.raises(StoreError, match="non-negative int"):
        check_round(server_round)  # type: ignore[arg-type]
    check_round(0)
