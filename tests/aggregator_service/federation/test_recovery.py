"""Durability: acknowledged updates survive a restart and are counted exactly once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from aggregator_service.store.run_store import RunStore
from shared.config import ExperimentConfig
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    shifted,
    update_body,
    wait_for,
)


def test_restart_resumes_round_with_acknowledged_updates(
    start_app: AppFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "durable"
    config = experiment(min_fit_clients=3, min_available_clients=3)
    first = start_app(config, state_dir=state_dir)
    register(first, "a", "b", "c")
    wait_for(first, lambda s: s["phase"] == "training")
    _, weights = global_model(first)
    updates = {
        "a": (shifted(weights, 1.0), 2),
        "b": (shifted(weights, 2.0), 3),
        "c": (shifted(weights, 4.0), 5),
    }
    for client_id in ("a", "b"):
        update, n = updates[client_id]
        body = update_body(client_id, 1, update, num_examples=n)
        assert first.post("/receive", content=body, headers=MSGPACK).json()["accepted"]
    first.__exit__(None, None, None)  # the aggregator goes away mid-round

    second = start_app(config, state_dir=state_dir)
    status = second.get("/status").json()
    assert status["round"] == 1
    assert status["phase"] == "training"
    assert status["received_from"] == ["a", "b"]
    assert status["registered_clients"] == 3
    again = update_body("a", 1, updates["a"][0], num_examples=2)
    assert second.post("/receive", content=again, headers=MSGPACK).json()["duplicate"] is True
    update, n = updates["c"]
    body = update_body("c", 1, update, num_examples=n)
    assert second.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(second, lambda s: s["round"] == 2)
    _, new = global_model(second)
    mean_shift = (1.0 * 2 + 2.0 * 3 + 4.0 * 5) / 10
    for name, array in weights.items():
        expected = (array.astype(np.float64) + mean_shift).astype(array.dtype)
        np.testing.assert_allclose(new[name], expected, rtol=1e-6, atol=1e-6)
    (row,) = second.get("/history").json()
    assert row["num_examples"] == 10


def _one_round_then_exit(
    start_app: AppFactory, config: ExperimentConfig, state_dir: Path
) -> tuple[dict[str, bytes], str]:
    """Run round 1 with clients a and b, stop; return their bodies and the model's sha256."""
    first = start_app(config, state_dir=state_dir)
    register(first, "a", "b")
    wait_for(first, lambda s: s["phase"] == "training")
    _, weights = global_model(first)
    bodies = {cid: update_body(cid, 1, shifted(weights, 1.0)) for cid in ("a", "b")}
    for body in bodies.values():
        first.post("/receive", content=body, headers=MSGPACK)
    wait_for(first, lambda s: s["round"] == 2)
    sha = first.get("/model").json()["sha256"]
    first.__exit__(None, None, None)
    return bodies, sha


def test_restart_after_a_round_resumes_from_the_checkpoint(
    start_app: AppFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "durable"
    config = experiment(num_rounds=3)
    _, sha = _one_round_then_exit(start_app, config, state_dir)

    second = start_app(config, state_dir=state_dir)
    status = second.get("/status").json()
    assert status["round"] == 2
    assert len(second.get("/history").json()) == 1
    assert second.get("/model").json()["sha256"] == sha


def test_updates_of_a_checkpointed_round_are_dropped_on_restart(
    start_app: AppFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "durable"
    config = experiment(num_rounds=3)
    bodies, _ = _one_round_then_exit(start_app, config, state_dir)
    # As if the process died between round 1's checkpoint and the removal of its updates:
    with RunStore(state_dir) as store:
        store.updates.save(1, "a", 10, bodies["a"])
    assert any((state_dir / "updates" / "1").iterdir())

    second = start_app(config, state_dir=state_dir)
    assert second.get("/status").json()["round"] == 2
    assert not (state_dir / "updates" / "1").exists()
    with RunStore(state_dir) as store:
        assert list(store.updates.pending(1)) == []


def test_state_dir_of_another_model_is_refused(start_app: AppFactory, tmp_path: Path) -> None:
    state_dir = tmp_path / "durable"
    start_app(experiment(), state_dir=state_dir)
    import pytest

    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="not a 'mlp-128' model"):
        start_app(experiment(model="mlp-128"), state_dir=state_dir)


def test_an_update_damaged_on_disk_before_the_close_is_left_out_and_named(
    start_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "damaged"
    app = start_app(experiment(min_fit_clients=3, min_available_clients=3), state_dir=state_dir)
    register(app, "a", "b", "c")
    wait_for(app, lambda s: s["phase"] == "training")
    _, weights = global_model(app)
    shifts = {"a": (1.0, 2), "b": (50.0, 3), "c": (4.0, 5)}
    for client_id in ("a", "b"):
        delta, n = shifts[client_id]
        body = update_body(client_id, 1, shifted(weights, delta), num_examples=n)
        assert app.post("/receive", content=body, headers=MSGPACK).status_code == 200
    digest = hashlib.sha256(b"b").hexdigest()[:32]
    (journalled,) = (state_dir / "updates" / "1").glob(f"{digest}-*.msgpack")
    with open(journalled, "r+b") as file:  # a sector garbled on disk after the reply
        file.seek(4096)
        file.write(b"\xff" * 64)
    delta, n = shifts["c"]
    body = update_body("c", 1, shifted(weights, delta), num_examples=n)
    assert app.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(app, lambda s: s["round"] == 2)
    (row,) = app.get("/history").json()
    assert row["participants"] == ["a", "c"]
    assert row["num_examples"] == 7
    _, new = global_model(app)
    mean_shift = (1.0 * 2 + 4.0 * 5) / 7
    for name, array in weights.items():
        expected = (array.astype(np.float64) + mean_shift).astype(array.dtype)
        np.testing.assert_allclose(new[name], expected, rtol=1e-6, atol=1e-6)
    assert "unreadable" in caplog.text
    assert "['b']" in caplog.text
