"""Tests of aggregator_service/store/run_store.py: durable run state."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from aggregator_service.store.run_store import RunStore, StoreError
from shared.errors import TributaryError

Weights = dict[str, np.ndarray]


def _as_bytes(pending: Iterable[tuple[str, int, memoryview]]) -> list[tuple[str, int, bytes]]:
    """The pending updates with their bodies (memory maps) as bytes, for comparisons."""
    return [(client_id, n, bytes(body)) for client_id, n, body in pending]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "state") as run_store:
        yield run_store


def _model(scale: float) -> Weights:
    return {
        "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4) * scale,
        "bn.num_batches_tracked": np.array(7, np.int64),
        "bn.running_mean": np.array([0.5, -1.5], np.float32) * scale,
        "counts": np.array([1, 2**40, -3], np.int64),
    }


def _assert_same(actual: Weights, expected: Weights) -> None:
    assert list(actual) == list(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        assert actual[name].shape == array.shape, name
        np.testing.assert_array_equal(actual[name], array)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- checkpoints


def test_no_checkpoint_yet(store: RunStore) -> None:
    assert store.latest_checkpoint() is None


def test_checkpoint_round_trip_keeps_names_order_dtypes_values(store: RunStore) -> None:
    weights = _model(1.0)
    weights = {"z.last_in_alphabet": np.ones(1, np.float32), **weights}
    store.save_checkpoint(0, weights)
    found = store.latest_checkpoint()
    assert found is not None
    server_round, loaded = found
    assert server_round == 0
    _assert_same(loaded, weights)
    assert loaded["bn.num_batches_tracked"].shape == ()


def test_checkpoint_keeps_odd_layouts_and_records_the_file_sha256(store: RunStore) -> None:
    weights: dict[str, np.ndarray] = {
        "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
        "strided": np.arange(20, dtype=np.float64)[::3],
        "flags": np.array([True, False, True]),
        "half": np.array([1.5, -2.0], np.float16),
        "empty": np.zeros((0, 4), np.float32),
        "big_endian": np.array([1, 2, 3], dtype=">i4"),
    }
    store.save_checkpoint(3, weights)
    found = store.latest_checkpoint()
    assert found is not None
    little = {**weights, "big_endian": weights["big_endian"].astype("<i4")}  # the file's order
    _assert_same(found[1], little)
    path = store.state_dir / "checkpoints" / "round-000003.safetensors"
    with sqlite3.connect(store.state_dir / "run.sqlite3") as db:
        (recorded,) = db.execute("SELECT sha256 FROM checkpoints").fetchone()
    assert recorded == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_is_a_safetensors_file_the_reference_reader_loads(store: RunStore) -> None:
    store.save_checkpoint(4, _model(3.0))
    path = store.state_dir / "checkpoints" / "round-000004.safetensors"
    loaded = safetensors.numpy.load_file(path)
    _assert_same({name: loaded[name] for name in _model(3.0)}, _model(3.0))
    with safetensors.safe_open(path, framework="np") as opened:
        assert opened.metadata() == {"round": "4"}


def test_npz_checkpoint_of_an_older_state_dir_still_loads(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        store.save_checkpoint(1, _model(1.0))
    path = tmp_path / "checkpoints" / "round-000002.npz"
    np.savez(path, allow_pickle=False, **_model(2.0))
    with sqlite3.connect(tmp_path / "run.sqlite3") as db:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        db.execute("INSERT INTO checkpoints VALUES (2, ?, ?)", (path.name, digest))
    with RunStore(tmp_path) as store:
        found = store.latest_checkpoint()
    assert found is not None
    assert found[0] == 2
    _assert_same(found[1], _model(2.0))


def test_latest_checkpoint_is_the_newest_round(store: RunStore) -> None:
    for server_round in range(3):
        store.save_checkpoint(server_round, _model(float(server_round)))
    found = store.latest_checkpoint()
    assert found is not None
    assert found[0] == 2
    _assert_same(found[1], _model(2.0))


def test_checkpoint_write_leaves_no_temp_files(store: RunStore) -> None:
    store.save_checkpoint(0, _model(1.0))
    store.save_checkpoint(1, _model(2.0))
    assert _files(store.state_dir / "checkpoints") == [
        "round-000000.safetensors",
        "round-000001.safetensors",
    ]


def test_keep_prunes_old_checkpoints(tmp_path: Path) -> None:
    with RunStore(tmp_path, keep=2) as store:
        for server_round in range(5):
            store.save_checkpoint(server_round, _model(float(server_round)))
        assert _files(tmp_path / "checkpoints") == [
            "round-000003.safetensors",
            "round-000004.safetensors",
        ]


def test_saving_a_round_again_replaces_it(store: RunStore) -> None:
    store.save_checkpoint(1, _model(1.0))
    store.save_checkpoint(1, _model(5.0))
    found = store.latest_checkpoint()
    assert found is not None
    _assert_same(found[1], _model(5.0))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_newest_checkpoint_falls_back(
    store: RunStore, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    store.save_checkpoint(1, _model(1.0))
    store.save_checkpoint(2, _model(2.0))
    newest = store.state_dir / "checkpoints" / "round-000002.safetensors"
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(flipped))
    else:
        newest.unlink()
    with caplog.at_level(logging.WARNING, logger="aggregator_service.store.run_store"):
        found = store.latest_checkpoint()
    assert found is not None
    assert found[0] == 1
    _assert_same(found[1], _model(1.0))
    assert any("round 2" in r.getMessage() for r in caplog.records)


def test_all_checkpoints_corrupt_gives_none(
    store: RunStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_checkpoint(0, _model(1.0))
    (store.state_dir / "checkpoints" / "round-000000.safetensors").write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger="aggregator_service.store.run_store"):
        assert store.latest_checkpoint() is None
    assert len(caplog.records) == 1


# -------------------------------------------------------------------- restart, history, meta


def test_updates_survive_a_restart(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        store.updates.save(2, "client-a", 10, b"alpha")
        store.updates.save(2, "client-b", 30, b"beta")
        store.save_checkpoint(1, _model(1.0))
        store.set_meta("run_id", "abc")
    with RunStore(tmp_path) as reopened:
        assert _as_bytes(reopened.updates.pending(2)) == [
            ("client-a", 10, b"alpha"),
            ("client-b", 30, b"beta"),
        ]
        found = reopened.latest_checkpoint()
        assert found is not None
        assert found[0] == 1
        assert reopened.get_meta("run_id") == "abc"


def test_history_is_ordered_by_round_and_replaced(store: RunStore) -> None:
    store.append_history({"round": 2, "loss": 0.5})
    store.append_history({"round": 1, "loss": 0.9, "clients": ["a", "b"]})
    store.append_history({"round": 2, "loss": 0.4})
    assert store.history() == [
        {"round": 1, "loss": 0.9, "clients": ["a", "b"]},
        {"round": 2, "loss": 0.4},
    ]


@pytest.mark.parametrize("row", [{"loss": 1.0}, {"round": "3"}, {"round": 1, "x": object()}])
def test_bad_history_rows_raise(store: RunStore, row: dict[str, object]) -> None:
    with pytest.raises(StoreError):
        store.append_history(row)
    assert store.history() == []


def test_meta_round_trip(store: RunStore) -> None:
    assert store.get_meta("clients") is None
    assert store.get_meta("clients", default=[]) == []
    store.set_meta("clients", ["a", "b"])
    store.set_meta("config_hash", "f00d")
    store.set_meta("clients", ["a", "b", "c"])
    assert store.get_meta("clients") == ["a", "b", "c"]
    assert store.get_meta("config_hash") == "f00d"


# ------------------------------------------------------------------------ the directory


def test_unwritable_state_dir_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="a-file") as caught:
        RunStore(blocker / "state")
    assert isinstance(caught.value, TributaryError)


def test_leftover_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        store.updates.save(1, "client-a", 1, b"x")
    (tmp_path / "checkpoints" / ".round-000001.safetensors.dead.tmp").write_bytes(b"half")
    (tmp_path / "updates" / "1" / ".abc.msgpack.dead.tmp").write_bytes(b"half")
    with RunStore(tmp_path) as store:
        assert _files(tmp_path / "checkpoints") == []
        assert len(_files(tmp_path / "updates")) == 1
        assert _as_bytes(store.updates.pending(1)) == [("client-a", 1, b"x")]
