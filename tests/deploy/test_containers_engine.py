"""tests/deploy/containers.py's Engine: when the container test runs, and why it skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.containers import Engine


def _fake_docker(directory: Path, exit_code: int) -> str:
    """A docker CLI whose `docker info` exits with `exit_code`."""
    path = directory / "docker"
    path.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    path.chmod(0o755)
    return str(path)


def test_a_running_engine_is_used_and_not_stopped(tmp_path: Path) -> None:
    """An engine that answers is taken as it is: nothing started, nothing to stop."""
    engine = Engine(_fake_docker(tmp_path, 0), tmp_path / "dockerd.log")
    assert engine.start() is None
    assert engine.process is None
    engine.stop()
    assert not (tmp_path / "dockerd.log").exists()


def test_without_root_the_reason_is_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No engine and no root: the skip reason says so, and no dockerd is tried."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    engine = Engine(_fake_docker(tmp_path, 1), tmp_path / "dockerd.log")
    assert engine.start() == "the Docker engine does not answer and starting it needs root"
    assert engine.process is None


def test_as_root_without_dockerd_the_reason_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root, but no dockerd on PATH: the engine cannot start, and the reason says why."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    engine = Engine(_fake_docker(tmp_path, 1), tmp_path / "dockerd.log")
    reason = engine.start()
    assert reason is not None
    assert reason.startswith("the Docker engine cannot start: dockerd is not installed")
