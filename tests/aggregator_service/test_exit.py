"""--exit-when-finished: the aggregator serves "finished" for a grace period, then exits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.wire import decode_message, decode_weights
from tests.aggregator_service.helpers import MSGPACK, update_body


@pytest.mark.slow
def test_exits_after_the_grace_period_once_finished(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "aggregator_service", "--port", str(port)]
    command += ["--state-dir", str(tmp_path / "state"), "--exit-when-finished"]
    for item in ("num_rounds=1", "min_fit_clients=1", "min_available_clients=1"):
        command += ["--set", item]
    command += ["--set", "server_eval=false"]
    env = {**os.environ, "TRIBUTARY_AGG_FINISH_GRACE_S": "3"}
    log = (tmp_path / "aggregator.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the aggregator exited before the run"
            assert time.monotonic() < deadline, "the aggregator did not become healthy"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
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
        process.wait(30)
        assert time.monotonic() - finished_at >= 2.5  # not before the grace period
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
