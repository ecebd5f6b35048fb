"""Personalization on the aggregator: the clients' own tensors are neither taken nor averaged."""

from __future__ import annotations

import numpy as np

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

HEAD = ("5.weight", "5.bias")  # the 2NN's last layer


def test_local_layers_are_left_out_of_updates_and_of_the_average(start_app: AppFactory) -> None:
    app = start_app(experiment(num_rounds=1, local_layers=["5.*"]))
    register(app, "a", "b")
    wait_for(app, lambda s: s["phase"] == "training")
    message, weights = global_model(app)
    assert message["config"]["local_layers"] == ["5.*"]
    assert sorted(weights) == sorted([*HEAD, "1.weight", "1.bias", "3.weight", "3.bias"])

    whole = update_body("a", 1, shifted(weights, 1.0))
    refused = app.post("/receive", content=whole, headers=MSGPACK)
    assert refused.status_code == 422, refused.text
    assert refused.json()["tensor"] == "5.weight"

    for client_id, delta, n in (("a", 1.0, 1), ("b", 4.0, 3)):
        shared = {k: v for k, v in shifted(weights, delta).items() if k not in HEAD}
        body = update_body(client_id, 1, shared, num_examples=n)
        reply = app.post("/receive", content=body, headers=MSGPACK)
        assert reply.status_code == 200, reply.text
    wait_for(app, lambda s: s["phase"] == "finished")
    _, final = global_model(app)
    for name, array in weights.items():
        if name in HEAD:  # nobody sent it: the global head stays as it was
            np.testing.assert_array_equal(final[name], array)
        else:  # (1 * 1.0 + 3 * 4.0) / 4 = 3.25
            expected = (array.astype(np.float64) + 3.25).astype(array.dtype)
            np.testing.assert_allclose(final[name], expected, rtol=1e-6, atol=1e-6)


def test_frozen_tensors_are_neither_taken_nor_averaged(start_app: AppFactory) -> None:
    app = start_app(experiment(num_rounds=1, trainable=["5.*"]))
    register(app, "a", "b")
    wait_for(app, lambda s: s["phase"] == "training")
    message, weights = global_model(app)
    assert message["config"]["trainable"] == ["5.*"]
    for client_id in ("a", "b"):
        head = {k: v for k, v in shifted(weights, 2.0).items() if k in HEAD}
        reply = app.post("/receive", content=update_body(client_id, 1, head), headers=MSGPACK)
        assert reply.status_code == 200, reply.text
    wait_for(app, lambda s: s["phase"] == "finished")
    (row,) = app.get("/history").json()
    assert row["bytes_in"] < 2 * 4 * (10 * 200 + 10) + 2048  # the head alone travelled
    _, final = global_model(app)
    for name, array in weights.items():
        expected = array + 2.0 if name in HEAD else array
        np.testing.assert_allclose(final[name], expected, rtol=1e-6, atol=1e-6)
