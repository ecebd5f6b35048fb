"""Fixtures of the fault tests: a group of real processes, stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.aggregator_service.helpers import start_app
from tests.fault.procs import Processes

__all__ = ["procs", "start_app"]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Start processes whose logs go to tmp_path; every survivor is stopped at teardown."""
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
