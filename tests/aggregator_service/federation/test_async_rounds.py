"""Async mode over HTTP: versions from buffers, staleness, refusals, restarts, every strategy."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shared.compression import CompressionSpec, decode_update, encode_update
from shared.config import CompressionConfig, ExperimentConfig
from shared.errors import ConfigError
from shared.wire import decode_message, encode_message, spec_of
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


def async_experiment(**section: Any) -> ExperimentConfig:
    """Three clients, async mode with the given `async:` section, no evaluation."""
    top = {k: section.pop(k) for k in ("strategy", "num_rounds") if k in section}
    return experiment(
        mode="async",
        min_available_clients=3,
        num_rounds=top.pop("num_rounds", 4),
        **{"async": section},
        **top,
    )


def post(client: TestClient, client_id: str, server_round: int, weights: Any) -> Any:
    return client.post(
        "/receive", content=update_body(client_id, server_round, weights), headers=MSGPACK
    )


def expect_shift(new: dict[str, np.ndarray], old: dict[str, np.ndarray], shift: float) -> None:
    for name, array in old.items():
        expected = (array.astype(np.float64) + shift).astype(array.dtype)
        np.testing.assert_allclose(new[name], expected, rtol=1e-5, atol=1e-5)


def test_fedbuff_weighs_a_stale_step_from_its_own_base(start_app: AppFactory) -> None:
    client = start_app(async_experiment(buffer_size=2))
    register(client, "a", "b", "c")
    status = wait_for(client, lambda s: s["phase"] == "training")
    assert status["mode"] == "async"
    assert status["version"] == 0
    assert status["selected"] == ["a", "b", "c"]
    assert status["needed"] == 2
    _, x0 = global_model(client)
    assert post(client, "a", 1, shifted(x0, 1.0)).json()["accepted"]
    assert post(client, "b", 1, shifted(x0, 3.0)).json()["accepted"]
    status = wait_for(client, lambda s: s["round"] == 2)
    assert status["selected"] == ["a", "b"]  # c still trains from version 0
    assert status["training"] == {"a": 2, "b": 2, "c": 1}
    _, x1 = global_model(client)
    expect_shift(x1, x0, 2.0)  # (1 + 3) / 2, both fresh
    post(client, "c", 1, shifted(x0, 4.0))  # trained from version 0: staleness 1
    post(client, "a", 2, shifted(x1, 1.0))
    wait_for(client, lambda s: s["round"] == 3)
    _, x2 = global_model(client)
    expect_shift(x2, x1, (4.0 / math.sqrt(2) + 1.0) / 2)
    rows = client.get("/history").json()
    assert rows[0]["staleness"] == {"mean": 0.0, "max": 0, "counts": {"0": 2}}
    assert rows[1]["staleness"]["counts"] == {"0": 1, "1": 1}
    assert rows[1]["clients"]["c"]["staleness"] == 1
    assert rows[1]["version"] == 2


def test_fedbuff_server_lr_scales_the_step(start_app: AppFactory) -> None:
    client = start_app(async_experiment(buffer_size=3, server_lr=0.5))
    register(client, "a", "b", "c")
    wait_for(client, lambda s: s["phase"] == "training")
    _, x0 = global_model(client)
    for client_id, shift in (("a", 1.0), ("b", 2.0), ("c", 6.0)):
        post(client, client_id, 1, shifted(x0, shift))
    wait_for(client, lambda s: s["round"] == 2)
    _, x1 = global_model(client)
    expect_shift(x1, x0, 0.5 * 3.0)


def test_fedasync_mixes_each_update_as_it_arrives(start_app: AppFactory) -> None:
    client = start_app(async_experiment(algorithm="fedasync", alpha=0.5, staleness="constant"))
    register(client, "a", "b", "c")
    wait_for(client, lambda s: s["phase"] == "training")
    _, x0 = global_model(client)
    post(client, "a", 1, shifted(x0, 2.0))
    wait_for(client, lambda s: s["round"] == 2)
    _, x1 = global_model(client)
    expect_shift(x1, x0, 1.0)  # x0 + 0.5 * 2
    post(client, "b", 1, shifted(x0, 4.0))  # mixed with x1, not with its base
    wait_for(client, lambda s: s["round"] == 3)
    _, x2 = global_model(client)
    expect_shift(x2, x0, 1.0 + 0.5 * 3.0)


def test_refusals_name_the_version(start_app: AppFactory) -> None:
    client = start_app(async_experiment(buffer_size=1, max_staleness=0))
    register(client, "a", "b", "c")
    wait_for(client, lambda s: s["phase"] == "training")
    _, x0 = global_model(client)
    future = post(client, "a", 2, x0)
    assert future.status_code == 422
    assert future.json()["error"] == "future_version"
    assert post(client, "a", 1, x0).json()["accepted"]
    wait_for(client, lambda s: s["round"] == 2)
    old = post(client, "b", 1, x0)  # staleness 1 > max_staleness 0
    assert old.status_code == 409
    assert old.json()["error"] == "too_stale"
    assert old.json()["round"] == 2
    again = post(client, "a", 1, x0)  # a retry of the accepted update, after its version
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    never = post(client, "zed", 2, x0)
    assert never.status_code in (403, 409)
    assert client.get("/status").json()["stale_refused"] == 1
    post(client, "a", 2, x0)
    wait_for(client, lambda s: s["round"] == 3)
    assert client.get("/history").json()[1]["stale_refused"] == 1


def test_concurrency_bounds_who_trains_and_a_poll_past_the_slot_frees_it(
    start_app: AppFactory,
) -> None:
    client = start_app(async_experiment(buffer_size=1, concurrency=1))
    register(client, "a", "b", "c")
    status = wait_for(client, lambda s: s["phase"] == "training")
    (holder,) = status["selected"]
    client.get("/get_weights", params={"client_id": holder, "min_round": 2})  # it gave up
    status = wait_for(client, lambda s: s["selected"] and s["selected"] != [holder])
    assert len(status["training"]) == 1
    assert holder not in status["training"]


def test_a_restart_mid_buffer_keeps_the_acknowledged_updates(
    start_app: AppFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "async-state"
    config = async_experiment(buffer_size=3)
    first = start_app(config, state_dir=state_dir)
    register(first, "a", "b", "c")
    wait_for(first, lambda s: s["phase"] == "training")
    _, x0 = global_model(first)
    post(first, "a", 1, shifted(x0, 1.0))
    post(first, "b", 1, shifted(x0, 2.0))
    first.__exit__(None, None, None)  # the aggregator goes away mid-buffer

    second = start_app(config, state_dir=state_dir)
    status = second.get("/status").json()
    assert status["round"] == 1
    assert status["received_from"] == ["a", "b"]
    assert status["training"] == {"c": 1}
    assert post(second, "a", 1, shifted(x0, 1.0)).json()["duplicate"] is True
    assert post(second, "c", 1, shifted(x0, 6.0)).json()["accepted"]
    wait_for(second, lambda s: s["round"] == 2)
    _, x1 = global_model(second)
    expect_shift(x1, x0, 3.0)
    (row,) = second.get("/history").json()
    assert row["participants"] == ["a", "b", "c"]


def test_a_restart_keeps_the_bases_of_stale_updates(start_app: AppFactory, tmp_path: Path) -> None:
    state_dir = tmp_path / "bases"
    config = async_experiment(buffer_size=1, staleness="constant")
    first = start_app(config, state_dir=state_dir)
    register(first, "a", "b", "c")
    wait_for(first, lambda s: s["phase"] == "training")
    _, x0 = global_model(first)
    post(first, "a", 1, shifted(x0, 1.0))
    wait_for(first, lambda s: s["round"] == 2)
    first.__exit__(None, None, None)

    second = start_app(config, state_dir=state_dir)
    _, x1 = global_model(second)
    post(second, "b", 1, shifted(x0, 2.0))  # from version 0, which only a checkpoint holds
    wait_for(second, lambda s: s["round"] == 3)
    _, x2 = global_model(second)
    expect_shift(x2, x1, 2.0)


ASYNC_STRATEGIES = [
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
]


@pytest.mark.parametrize("name", ASYNC_STRATEGIES)
def test_every_strategy_that_composes_makes_versions(start_app: AppFactory, name: str) -> None:
    config = async_experiment(buffer_size=3, num_rounds=2, strategy={"name": name})
    client = start_app(config)
    register(client, "a", "b", "c")
    wait_for(client, lambda s: s["phase"] == "training")
    _, x0 = global_model(client)
    for shift, client_id in enumerate("abc"):
        assert post(client, client_id, 1, shifted(x0, 0.01 * (shift + 1))).status_code == 200
    wait_for(client, lambda s: s["round"] == 2)
    _, x1 = global_model(client)
    for shift, client_id in enumerate("abc"):
        assert post(client, client_id, 2, shifted(x1, 0.01 * (shift + 1))).status_code == 200
    status = wait_for(client, lambda s: s["phase"] == "finished")
    rows = client.get("/history").json()
    assert [r["version"] for r in rows] == [1, 2]
    assert status["version"] == 2
    _, final = global_model(client)
    assert all(np.isfinite(a).all() for a in final.values())
    assert any(not np.array_equal(final[k], x1[k]) for k in x1)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"strategy": "scaffold"}, "synchronous cohort"),
        ({"strategy": {"name": "dpfedavg", "noise_multiplier": 1.0}}, "sampling"),
        ({"secagg": {"enabled": True}}, "masks cancel"),
        ({"fraction_fit": 0.5}, "async.concurrency"),
        ({"close_at_threshold": True}, "buffer_size"),
        ({"download_compression": {"encoding": "q8"}}, "chain of steps"),
        ({"strategy": {"name": "fedadam"}, "async": {"server_lr": 0.5}}, "leave async.server_lr"),
        ({"strategy": "fedmedian", "async": {"algorithm": "fedasync"}}, "single update"),
    ],
)
def test_settings_without_meaning_in_async_mode_are_refused(
    overrides: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        experiment(mode="async", **overrides)


def test_a_client_not_selected_is_not_woken_by_republishes(start_app: AppFactory) -> None:
    client = start_app(async_experiment(buffer_size=3, concurrency=1))
    register(client, "a", "b", "c")
    status = wait_for(client, lambda s: s["phase"] == "training")
    (holder,) = status["selected"]
    etags = {}
    for other in sorted(set("abc") - {holder}):
        reply = client.get("/get_weights", params={"client_id": other})
        assert reply.headers["X-Tributary-Selected"] == "false"
        etags[other] = reply.headers["ETag"]
    _, x0 = global_model(client)
    post(client, holder, 1, shifted(x0, 1.0))  # its slot goes to one of the other two
    status = wait_for(client, lambda s: s["selected"] and s["selected"] != [holder])
    (chosen,) = status["selected"]
    (left,) = set(etags) - {chosen}
    for other, expected in ((chosen, 200), (left, 304)):
        reply = client.get(
            "/get_weights",
            params={"client_id": other, "wait": 0.2},
            headers={"If-None-Match": etags[other]},
        )
        assert reply.status_code == expected, other
    assert reply.content == b""  # the one left waiting downloads nothing


def test_a_stale_compressed_delta_is_rebuilt_on_its_own_base(start_app: AppFactory) -> None:
    config = async_experiment(buffer_size=1, staleness="constant")
    config = config.model_copy(update={"compression": CompressionConfig(encoding="q8")})
    client = start_app(config)
    register(client, "a", "b", "c")
    wait_for(client, lambda s: s["phase"] == "training")
    _, x0 = global_model(client)
    post(client, "a", 1, shifted(x0, 1.0))  # full weights are still accepted
    wait_for(client, lambda s: s["round"] == 2)
    _, x1 = global_model(client)
    rng = np.random.default_rng(7)
    deltas = {
        name: (rng.standard_normal(a.shape) * 0.01).astype(a.dtype) if a.dtype.kind == "f" else a
        for name, a in x0.items()
    }
    encoded = encode_update(deltas, CompressionSpec(encoding="q8"))
    body = update_body("b", 1, encoded, delta=True)  # trained from version 0: staleness 1
    assert client.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(client, lambda s: s["round"] == 3)
    _, x2 = global_model(client)
    sent = decode_message(encode_message({"weights": encoded}))["weights"]
    step = decode_update(sent, spec_of(x0))  # what the aggregator decodes: q8's rounding
    for name, array in x1.items():
        if array.dtype.kind == "f":
            np.testing.assert_allclose(x2[name], array + step[name], rtol=1e-5, atol=1e-6)


def test_a_buffer_takes_exactly_buffer_size_updates_posted_at_once(start_app: AppFactory) -> None:
    config = async_experiment(buffer_size=2).model_copy(update={"min_available_clients": 4})
    client = start_app(config)
    register(client, "a", "b", "c", "d")
    wait_for(client, lambda s: s["phase"] == "training")
    _, x0 = global_model(client)
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda cid: post(client, cid, 1, shifted(x0, 1.0)), "abcd"))
    assert [reply.status_code for reply in replies] == [200] * 4
    wait_for(client, lambda s: s["round"] == 3)
    rows = client.get("/history").json()
    assert [len(row["participants"]) for row in rows] == [2, 2]
    assert sorted(rows[0]["participants"] + rows[1]["participants"]) == ["a", "b", "c", "d"]
    assert rows[1]["staleness"]["counts"] == {"1": 2}  # trained from version 0, taken in 2
