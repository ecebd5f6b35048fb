"""DP-FedAvg through the round loop: epsilon per round, the budget stop, the clip-norm check."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from shared.privacy.accounting import RoundSampling, epsilon_after
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

Z, DELTA = 4.0, 1e-5


def _dp(**strategy: Any) -> dict[str, Any]:
    params = {"name": "dpfedavg", "noise_multiplier": Z, "noise_seed": 1, "delta": DELTA}
    return {"strategy": params | strategy, "num_partitions": 2}


def _nudged(weights: dict[str, np.ndarray], size: float) -> dict[str, np.ndarray]:
    """Return the weights with their first floating tensor moved by a delta of norm `size`."""
    name = next(n for n, a in weights.items() if a.dtype.kind == "f")
    moved = dict(weights)
    step = np.zeros(weights[name].size)
    step[0] = size
    moved[name] = (weights[name] + step.reshape(weights[name].shape)).astype(np.float32)
    return moved


def _training(status: dict[str, Any], *, server_round: int) -> bool:
    return bool(status["round"] == server_round and status["phase"] == "training")


def _train_round(client: Any, server_round: int, size: float = 0.1) -> None:
    _, weights = global_model(client)
    for client_id in ("a", "b"):
        body = update_body(client_id, server_round, _nudged(weights, size))
        reply = client.post("/receive", content=body, headers=MSGPACK)
        assert reply.status_code == 200, reply.text


def test_each_round_reports_epsilon_and_the_budget_stops_the_run(start_app: AppFactory) -> None:
    everyone = RoundSampling(2, 2)
    after = [epsilon_after([everyone] * k, noise_multiplier=Z, delta=DELTA) for k in (1, 2, 3)]
    target = (after[1] + after[2]) / 2  # two rounds fit, a third would not
    client = start_app(experiment(num_rounds=5, **_dp(target_epsilon=target)))
    register(client, "a", "b")
    for server_round in (1, 2):
        wait_for(client, functools.partial(_training, server_round=server_round))
        _train_round(client, server_round)
    status = wait_for(client, lambda s: s["phase"] == "finished")
    assert status["round"] == 2
    privacy = status["privacy"]
    assert privacy["epsilon"] == after[1]
    assert (privacy["delta"], privacy["target_epsilon"], privacy["accountant"]) == (
        DELTA,
        target,
        "rdp",
    )
    assert privacy["clip_norm"] == 1.0
    stop = privacy["budget_stop"]
    assert stop["reason"] == "privacy budget"
    assert (stop["round"], stop["epsilon"], stop["next_epsilon"]) == (2, after[1], after[2])
    assert stop["message"].startswith(f"privacy budget: epsilon would reach {after[2]:.4g} after")
    assert stop["message"].endswith(f"finishes after round 2 at epsilon {after[1]:.4g}")
    rows = client.get("/history").json()
    assert [row["epsilon"] for row in rows] == after[:2]
    assert {row["delta"] for row in rows} == {DELTA}
    assert rows[0]["dp_sampling"] == {"population": 2, "sample_size": 2}


def test_a_client_clipped_delta_over_c_is_refused_at_ingest(start_app: AppFactory) -> None:
    client = start_app(experiment(**_dp(clipping="client", clip_norm=0.5)))
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training")
    message, weights = global_model(client)
    assert message["config"]["clip_norm"] == 0.5
    too_far = update_body("a", 1, _nudged(weights, 0.6))
    refused = client.post("/receive", content=too_far, headers=MSGPACK)
    assert refused.status_code == 422
    body = refused.json()
    assert body["error"] == "norm_over_clip"
    assert "L2 norm 0.6" in body["detail"]
    assert "C=0.5" in body["detail"]
    assert client.get("/status").json()["received"] == 0  # nothing was kept
    within = update_body("a", 1, _nudged(weights, 0.5))
    assert client.post("/receive", content=within, headers=MSGPACK).status_code == 200
