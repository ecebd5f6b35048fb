"""--exit-when-finished: the aggregator serves "finished" for a grace period, then exits."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from shared.wire import decode_message, decode_weights
from tests.aggregator_service.helpers import MSGPACK, aggregator_process, update_body


@pytest.mark.slow
def test_exits_after_the_grace_period_once_finished(tmp_path: Path) -> None:
    overrides = ("num_rounds=1", "min_fit_clients=1", "min_available_clients=1")
    with aggregator_process(
        tmp_path / "state",
        *overrides,
        "server_eval=false",
        flags=["--exit-when-finished"],
        env={"TRIBUTARY_AGG_FINISH_GRACE_S": "3"},
    ) as (url, process):
        with httpx.Client(base_url=url, timeout=30) as http:
            http.post("/register", json={"client_id": "a"}).raise_for_status()
            reply = http.get("/get_weights", params={"min_round": 1, "wait": 10})
            message = decode_message(reply.content)
            while message["phase"] != "training":
                reply = http.get(
                    "/get_weights",
                    headers={"If-None-Match": reply.headers["etag"]},
                    params={"wait": 10},
                )
                message = decode_message(reply.content)
            weights = decode_weights(message["weights"])
            http.post("/receive", content=update_body("a", 1, weights), headers=MSGPACK)
            finished_at = time.monotonic()
            late = http.get("/get_weights", params={"min_round": 2, "wait": 10})
            assert decode_message(late.content)["phase"] == "finished"  # still served
        process.wait(30)  # it exits by itself
        assert time.monotonic() - finished_at >= 2.5  # not before the grace period
