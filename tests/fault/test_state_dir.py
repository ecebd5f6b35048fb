"""A damaged, full or impossible state dir: a clear error, a fallback to the previous good
checkpoint, or a 503 that accepts nothing; never a silently reset model."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fault.federation import (
    assert_model_equals,
    fetch_global,
    known_updates,
    post_update,
    register_all,
)
from tests.fault.procs import REPO, Proc, Processes, damage, free_port, get_json, wait_until

pytestmark = pytest.mark.slow

CLIENTS = ["a", "b"]
OVERRIDES = (
    "model=mlp",
    "dataset=mnist5k",
    "server_eval=false",
    "num_rounds=5",
    "min_fit_clients=2",
    "min_available_clients=2",
    "round_timeout_s=120",
)
FSIZE_LIMIT = 256 * 1024  # bytes; an mlp checkpoint or update is about 800 KB


def play_round(url: str, server_round: int) -> None:
    """Post both clients' known updates for `server_round` and wait for the next round."""
    wait_until(url, lambda s: (s["round"], s["phase"]) == (server_round, "training"), timeout=20)
    _, start = fetch_global(url)
    for update in known_updates(start, CLIENTS, server_round).values():
        assert post_update(url, update).status_code == 200
    wait_until(url, lambda s: s["round"] == server_round + 1, timeout=20)


def stop(proc: Proc) -> None:
    """SIGTERM the aggregator and wait for it to exit."""
    proc.process.send_signal(signal.SIGTERM)
    proc.wait(20)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(
    procs: Processes, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    first = procs.aggregator(state_dir, *OVERRIDES)
    register_all(first.url, CLIENTS)
    play_round(first.url, 1)
    after_round_1 = get_json(first.url, "/model")["sha256"]
    _, weights_1 = fetch_global(first.url)
    play_round(first.url, 2)
    after_round_2 = get_json(first.url, "/model")["sha256"]
    stop(first)

    damage(state_dir / "checkpoints" / "round-000002.safetensors")
    second = procs.aggregator(state_dir, *OVERRIDES, name="aggregator-restarted")
    status = wait_until(second.url, lambda s: s["phase"] == "training", timeout=20)
    assert status["round"] == 2  # round 2 is played again from round 1's model
    model = get_json(second.url, "/model")
    assert model["sha256"] == after_round_1 != after_round_2
    _, weights = fetch_global(second.url)
    assert_model_equals(weights, weights_1)
    assert "checkpoint of round 2" in second.log()  # the fallback is logged, not silent


def test_every_checkpoint_corrupt_is_refused_not_reset(procs: Processes, tmp_path: Path) -> None:
    """With no usable checkpoint left, starting from the initial model would silently
    discard finished rounds: the aggregator must refuse to start instead."""
    state_dir = tmp_path / "state"
    first = procs.aggregator(state_dir, *OVERRIDES)
    register_all(first.url, CLIENTS)
    play_round(first.url, 1)
    play_round(first.url, 2)
    stop(first)
    for checkpoint in (state_dir / "checkpoints").glob("round-*.safetensors"):
        damage(checkpoint)

    second = procs.aggregator(state_dir, *OVERRIDES, name="aggregator-restarted", wait=False)
    try:
        code = second.wait(60)
    except subprocess.TimeoutExpired:
        status = get_json(second.url, "/status")
        pytest.fail(f"started from scratch after 2 finished rounds: round {status['round']}")
    assert code != 0
    assert "checkpoint" in second.log()


def test_state_dir_that_is_a_file_is_a_clear_start_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a regular file\n")
    command = [sys.executable, "-m", "aggregator_service", "--port", str(free_port())]
    command += ["--state-dir", str(not_a_dir), "--log-level", "warning"]
    command += ["--set", "server_eval=false"]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert str(not_a_dir) in output
    assert "Not a directory" in output or "not a directory" in output
    assert "Traceback" not in output, output


def test_full_state_dir_answers_503_and_accepts_nothing(procs: Processes, tmp_path: Path) -> None:
    """Files over FSIZE_LIMIT fail to write (EFBIG), as on a full disk; lifting the limit
    while the aggregator runs lets the same update in."""
    state_dir = tmp_path / "state"
    port = free_port()
    stop(procs.aggregator(state_dir, *OVERRIDES, port=port))  # writes round 0's checkpoint

    full = procs.aggregator(
        state_dir, *OVERRIDES, port=port, name="aggregator-full", preexec_fn=_limit_file_size
    )
    register_all(full.url, CLIENTS)
    wait_until(full.url, lambda s: s["phase"] == "training", timeout=20)
    before = get_json(full.url, "/model")["sha256"]
    _, start = fetch_global(full.url)
    update = known_updates(start, CLIENTS, 1)["a"]

    reply = post_update(full.url, update)
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"] == "storage_unavailable"
    assert "Retry-After" in reply.headers
    assert get_json(full.url, "/model")["sha256"] == before
    status = get_json(full.url, "/status")
    assert (status["received"], status["in_progress"]) == (0, [])
    assert httpx.get(f"{full.url}/healthz", timeout=10).status_code == 200

    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)  # the soft limit: no privilege
    resource.prlimit(full.pid, resource.RLIMIT_FSIZE, unlimited)  # space is back
    again = post_update(full.url, update)
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is False
    assert get_json(full.url, "/status")["received_from"] == ["a"]


def _limit_file_size() -> None:
    """In the child before exec: refuse writes that make a file larger than FSIZE_LIMIT."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, resource.RLIM_INFINITY))
