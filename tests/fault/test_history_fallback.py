"""After a fallback to an older checkpoint, /history matches the model that was restored.

In-process (TestClient): the fallback itself is covered with real processes in
test_state_dir.py; this checks the bookkeeping around it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

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
from tests.fault.procs import damage


def play_round(client: TestClient, server_round: int) -> None:
    """Post updates of clients a and b for `server_round` and wait for the next round."""
    wait_for(client, lambda s: (s["round"], s["phase"]) == (server_round, "training"))
    _, weights = global_model(client)
    for client_id in ("a", "b"):
        body = update_body(client_id, server_round, shifted(weights, 0.01))
        assert client.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(client, lambda s: s["round"] == server_round + 1)


def test_history_forgets_rounds_whose_checkpoint_was_lost(
    start_app: AppFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    config = experiment(num_rounds=5)
    first = start_app(config, state_dir=state_dir)
    register(first, "a", "b")
    play_round(first, 1)
    play_round(first, 2)
    first.__exit__(None, None, None)
    damage(state_dir / "checkpoints" / "round-000002.safetensors")

    second = start_app(config, state_dir=state_dir)
    assert second.get("/status").json()["round"] == 2  # resumed from round 1's checkpoint
    assert [row["round"] for row in second.get("/history").json()] == [1]
    play_round(second, 2)
    assert [row["round"] for row in second.get("/history").json()] == [1, 2]
