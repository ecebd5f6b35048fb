"""Start-up errors: `python -m aggregator_service` prints one clear line and exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from aggregator_service.store.run_store import StoreError
from tests.aggregator_service.helpers import AppFactory, experiment

PROG = "tributary-aggregator: "


def _start(*args: str | Path) -> tuple[int, str]:
    """Run the aggregator (port 0: nothing may be served anyway); return its code and stderr."""
    command = [sys.executable, "-m", "aggregator_service", "--port", "0", "--log-level", "error"]
    done = subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    return done.returncode, done.stderr


def _the_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(PROG), stderr
    return lines[0]


def test_a_bad_tokens_file_exits_2_with_one_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("a: k2Jd8fQz0P-vX4nW7rT_yU1sA9bC3eG5hL6mN8o\nb: change-me\n")
    code, stderr = _start("--state-dir", tmp_path / "state", "--tokens-file", tokens)
    assert code == 2
    line = _the_line(stderr)
    assert f"tokens file {tokens} line 2: the token of client 'b' is too short" in line
    assert "change-me" not in line
    assert "k2Jd8fQz0P" not in line


def test_a_state_dir_that_cannot_be_created_exits_2_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, stderr = _start("--state-dir", blocker / "state")
    assert code == 2
    line = _the_line(stderr)
    assert f"cannot use state directory {blocker / 'state'}" in line
    assert "--state-dir" in line


def _corrupt_every_checkpoint(start_app: AppFactory, state_dir: Path) -> None:
    first = start_app(experiment(), state_dir=state_dir)  # writes the round-0 checkpoint
    first.__exit__(None, None, None)
    checkpoints = sorted((state_dir / "checkpoints").glob("round-*.safetensors"))
    assert checkpoints
    for path in checkpoints:
        path.write_bytes(b"this is not the model any more")


def test_corrupt_checkpoints_only_refuse_to_start_instead_of_starting_over(
    start_app: AppFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    _corrupt_every_checkpoint(start_app, state_dir)
    code, stderr = _start("--state-dir", state_dir, "--set", "num_rounds=2")
    assert code == 2
    line = _the_line(stderr)
    assert f"the state directory {state_dir} holds a run but none of its checkpoints" in line
    settings = AggregatorSettings(state_dir=state_dir)
    with (  # the app refuses too, not only the command line
        pytest.raises(StoreError, match="refusing to start over"),
        TestClient(create_app(settings, experiment())),
    ):
        pass


def test_flags_reach_the_settings_and_the_server(tmp_path: Path) -> None:
    from aggregator_service.__main__ import prepare

    flags = ["--state-dir", str(tmp_path / "s"), "--port", "0"]
    settings, server = prepare([*flags, "--no-access-log"])
    assert settings.access_log is False
    assert server.config.access_log is False
    assert server.config.http == "httptools"  # uvicorn's own protocol: no private API used
    settings, server = prepare(flags)
    assert settings.access_log is True
    assert server.config.access_log is True
