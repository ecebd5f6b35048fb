"""Bit-identical rounds: the same updates give the same model whatever their order, and
a restart between rounds (server-optimizer state included) changes nothing."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator_service.federation.publish import model_digest
from aggregator_service.strategy import STRATEGIES, build_strategy
from shared.wire import TensorSpec, spec_of
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

CLIENTS = ("c0", "c1", "c2", "c3")
ROUNDS = 3
# DP-FedAvg draws its noise from OS entropy unless a seed is set: with one, reruns and
# restarts give the same noise, so the same models
PARAMETERS: dict[str, dict[str, Any]] = {"dpfedavg": {"noise_seed": 11}}


def _update(
    weights: dict[str, np.ndarray],
    client: int,
    server_round: int,
    group_specs: Mapping[str, Mapping[str, TensorSpec]],
) -> bytes:
    """A client's update: a seeded step from the model it received, large and small values,
    and seeded tensors for the groups the strategy asks for (protocol 2 when any)."""
    rng = np.random.default_rng([server_round, client])
    stepped = {
        name: (a + rng.standard_normal(a.shape) * 10.0 ** rng.integers(-6, 1, a.shape)).astype(
            a.dtype
        )
        if a.dtype.kind == "f"
        else a.copy()
        for name, a in weights.items()
    }
    groups = {
        group: {name: rng.standard_normal(s.shape).astype(s.dtype) for name, s in specs.items()}
        for group, specs in group_specs.items()
    }
    fields: dict[str, Any] = {"protocol": 2, "groups": groups} if groups else {}
    return update_body(
        CLIENTS[client], server_round, stepped, num_examples=7 + 13 * client, **fields
    )


def _training(status: dict[str, Any], *, server_round: int) -> bool:
    return bool(status["round"] == server_round and status["phase"] == "training")


def _play(
    start_app: AppFactory, state_dir: Path, strategy: str, orders: list[list[int]], *, restart: bool
) -> list[str]:
    """Run ROUNDS rounds posting in the given orders; restart after round 1 if asked."""
    config = experiment(
        num_rounds=ROUNDS,
        min_fit_clients=4,
        min_available_clients=4,
        strategy={"name": strategy, **PARAMETERS.get(strategy, {})},
    )
    app = start_app(config, state_dir=state_dir)
    register(app, *CLIENTS)
    for server_round in range(1, ROUNDS + 1):
        if restart and server_round == 2:
            app.__exit__(None, None, None)
            app = start_app(config, state_dir=state_dir)
        opened = functools.partial(_training, server_round=server_round)
        wait_for(app, opened)
        _, weights = global_model(app)
        group_specs = build_strategy(config.strategy).update_groups(spec_of(weights))
        for client in orders[server_round - 1]:
            body = _update(weights, client, server_round, group_specs)
            reply = app.post("/receive", content=body, headers=MSGPACK)
            assert reply.status_code == 200, reply.text
    wait_for(app, lambda s: s["phase"] == "finished")
    history = app.get("/history").json()
    _, final = global_model(app)
    assert history[-1]["model_sha256"] == model_digest(final)  # the row names the model
    return [row["model_sha256"] for row in history]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_arrival_order_and_a_restart_change_no_bit(
    start_app: AppFactory, tmp_path: Path, strategy: str
) -> None:
    straight = _play(start_app, tmp_path / "a", strategy, [[0, 1, 2, 3]] * ROUNDS, restart=False)
    shuffled = _play(
        start_app,
        tmp_path / "b",
        strategy,
        [[3, 1, 0, 2], [2, 0, 3, 1], [1, 3, 2, 0]],
        restart=True,
    )
    assert len(straight) == ROUNDS
    assert len(set(straight)) == ROUNDS  # every round moved the model
    assert shuffled == straight


def _round_of_constant_updates(start_app: AppFactory, state_dir: Path, order: list[int]) -> float:
    """One FedAvg round whose four updates hold constants that float64 sums order-dependently."""
    config = experiment(num_rounds=1, min_fit_clients=4, min_available_clients=4)
    app = start_app(config, state_dir=state_dir)
    register(app, *CLIENTS)
    wait_for(app, lambda s: s["phase"] == "training")
    _, weights = global_model(app)
    values = [2.0**-53, 2.0**-53, 2.0**-24, 1.0]  # of c0, c1, c2, c3; all exact in float32
    for client in order:
        constant = {
            name: np.full(a.shape, values[client], a.dtype) if a.dtype.kind == "f" else a
            for name, a in weights.items()
        }
        body = update_body(CLIENTS[client], 1, constant, num_examples=1)
        assert app.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(app, lambda s: s["phase"] == "finished")
    _, final = global_model(app)
    first = next(a for a in final.values() if a.dtype.kind == "f")
    assert np.unique(first).size == 1
    return float(first.reshape(-1)[0])


def test_a_sum_that_depends_on_order_is_folded_in_client_id_order(
    start_app: AppFactory, tmp_path: Path
) -> None:
    # Folded 1 + 2**-24 + 2**-53 + 2**-53 (the reverse order), float64 rounds both small
    # terms away and the float32 mean ties down to 0.25; folded in client-id order, the
    # sum is exactly 1 + 2**-24 + 2**-52 and the mean rounds up, as the exact mean does.
    exact_mean = 0.25 + 2.0**-25
    assert _round_of_constant_updates(start_app, tmp_path / "a", [3, 2, 1, 0]) == exact_mean
    assert _round_of_constant_updates(start_app, tmp_path / "b", [0, 1, 2, 3]) == exact_mean
