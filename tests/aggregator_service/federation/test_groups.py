"""Protocol 2 on the aggregator: a strategy's tensor groups are published, required and
handed to it; plain runs stay protocol 1."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

from aggregator_service.federation import federation
from aggregator_service.strategy import ClientUpdate
from aggregator_service.strategy.fedavg import FedAvg
from shared.wire import TensorSpec, decode_groups, decode_message
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)


class _Echo(FedAvg):
    """FedAvg that publishes a group "c" (zeros, then the mean of the updates' "c")."""

    name: ClassVar[str] = "fedavg"
    seen: ClassVar[list[list[ClientUpdate]]] = []

    def __init__(self) -> None:
        self._c: dict[str, np.ndarray] = {"bias": np.zeros(10, np.float32)}

    def update_groups(self, model: Mapping[str, TensorSpec]) -> dict[str, dict[str, TensorSpec]]:
        return {"c": {"bias": TensorSpec((10,), "float32")}}

    def published_groups(self) -> dict[str, dict[str, np.ndarray]]:
        return {"c": self._c}

    def aggregate(
        self,
        server_round: int,
        current: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
    ) -> dict[str, np.ndarray]:
        held = list(updates)
        _Echo.seen.append(held)
        self._c = {"bias": np.mean([u.groups["c"]["bias"] for u in held], axis=0)}
        return super().aggregate(server_round, current, held)


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> type[_Echo]:
    """Build every federation of the test with the `_Echo` strategy."""
    _Echo.seen = []
    monkeypatch.setattr(federation, "build_strategy", lambda config: _Echo())
    return _Echo


def _v2(client_id: str, weights: dict[str, np.ndarray], c: float, **fields: Any) -> bytes:
    groups = {"c": {"bias": np.full(10, c, np.float32)}}
    return update_body(client_id, 1, weights, protocol=2, groups=groups, **fields)


def test_a_plain_run_publishes_protocol_1(start_app: AppFactory) -> None:
    app = start_app()
    register(app, "a", "b")
    wait_for(app, lambda s: s["phase"] == "training")
    message, _ = global_model(app)
    assert message["protocol"] == 1
    assert "groups" not in message
    assert message["config"]["strategy"] == "fedavg"
    assert "update_groups" not in message["config"]


def test_groups_are_published_required_and_aggregated(
    start_app: AppFactory, echo: type[_Echo]
) -> None:
    app = start_app(experiment(num_rounds=1))
    register(app, "a", "b")
    wait_for(app, lambda s: s["phase"] == "training")
    message, weights = global_model(app)
    assert message["protocol"] == 2
    assert message["config"]["update_groups"] == ["c"]
    published = decode_groups(message["groups"])
    np.testing.assert_array_equal(published["c"]["bias"], np.zeros(10, np.float32))

    plain = app.post("/receive", content=update_body("a", 1, weights), headers=MSGPACK)
    assert plain.status_code == 422, plain.text
    assert plain.json()["error"] == "invalid_update"
    assert "'c' is missing" in plain.json()["detail"]
    extra = update_body(
        "a",
        1,
        weights,
        protocol=2,
        groups={"c": {"bias": np.ones(10, np.float32)}, "d": {"x": np.ones(1, np.float32)}},
    )
    refused = app.post("/receive", content=extra, headers=MSGPACK)
    assert refused.status_code == 422, refused.text
    assert "'d' is not used" in refused.json()["detail"]
    wrong_shape = update_body(
        "a", 1, weights, protocol=2, groups={"c": {"bias": np.ones(3, np.float32)}}
    )
    refused = app.post("/receive", content=wrong_shape, headers=MSGPACK)
    assert refused.status_code == 422, refused.text
    assert refused.json()["tensor"] == "groups.c.bias"
    assert app.get("/status").json()["received"] == 0  # nothing was taken

    for client_id, c in (("b", 3.0), ("a", 1.0)):
        reply = app.post("/receive", content=_v2(client_id, weights, c), headers=MSGPACK)
        assert reply.status_code == 200, reply.text
    wait_for(app, lambda s: s["phase"] == "finished")
    (updates,) = echo.seen
    assert [u.client_id for u in updates] == ["a", "b"]
    assert [float(u.groups["c"]["bias"][0]) for u in updates] == [1.0, 3.0]
    final = decode_message(app.get("/get_weights").content)
    np.testing.assert_array_equal(decode_groups(final["groups"])["c"]["bias"], np.full(10, 2.0))


class _PerTensor(_Echo):
    """Asks every update for a group "g" holding one float32 scalar per tensor it carries."""

    def update_groups(self, model: Mapping[str, TensorSpec]) -> dict[str, dict[str, TensorSpec]]:
        return {"g": {name: TensorSpec((), "float32") for name in model}}


def test_group_specs_follow_the_tensors_updates_carry(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(federation, "build_strategy", lambda config: _PerTensor())
    app = start_app(experiment(num_rounds=1, local_layers=["5.*"]))  # the 2NN's head: own
    register(app, "a", "b")
    wait_for(app, lambda s: s["phase"] == "training")
    message, weights = global_model(app)
    assert message["config"]["update_groups"] == ["g"]
    carried = {name: a for name, a in weights.items() if not name.startswith("5.")}
    with_head = {"g": {name: np.zeros((), np.float32) for name in weights}}
    body = update_body("a", 1, carried, protocol=2, groups=with_head)
    refused = app.post("/receive", content=body, headers=MSGPACK)
    assert refused.status_code == 422, refused.text
    assert refused.json()["tensor"] == "groups.g.5.weight"  # not a tensor updates carry
    groups = {"g": {name: np.zeros((), np.float32) for name in carried}}
    body = update_body("a", 1, carried, protocol=2, groups=groups)
    assert app.post("/receive", content=body, headers=MSGPACK).status_code == 200
