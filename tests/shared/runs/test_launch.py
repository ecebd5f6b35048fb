"""Child processes: start, health, death detection, stop of whole groups, no orphans.

Every process here is a small Python program started by the test; each test ends them by
PID in a `finally` if the code under test did not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.runs.launch import Fleet, LaunchError, StopSignals, fetch_json, free_port, wait_healthy

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
DEADLINE_S = 20.0


def gone(pid: int) -> bool:
    """Tell whether `pid` no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_until(predicate: object, *, timeout_s: float = DEADLINE_S) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def kill_quietly(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def read_pids(path: Path, count: int) -> list[int]:
    assert wait_until(lambda: len(path.read_text().split()) >= count if path.exists() else False)
    return [int(word) for word in path.read_text().split()[:count]]


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    started = Fleet(grace_s=2.0)
    try:
        yield started
    finally:
        kill_quietly([child.pid for child in started.children])
        for child in started.children:
            child.process.wait(timeout=DEADLINE_S)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_writes_the_log_and_stop_reaps(fleet: Fleet, tmp_path: Path) -> None:
    code = "print('hello from the child', flush=True); import time; time.sleep(60)"
    child = fleet.start("talker", [sys.executable, "-c", code], log_path=tmp_path / "t.log")
    assert os.getpgid(child.pid) == child.pid  # its own process group
    assert wait_until(lambda: "hello from the child" in child.log_tail())
    fleet.stop()
    assert child.poll() == -signal.SIGTERM
    assert fleet.running() == []


def test_stop_ends_the_whole_process_group(fleet: Fleet, tmp_path: Path) -> None:
    parent = textwrap.dedent(
        f"""
        import subprocess, sys, time
        kid = subprocess.Popen({SLEEPER!r})
        open({str(tmp_path / "pids")!r}, "w").write(str(kid.pid))
        time.sleep(60)
        """
    )
    child = fleet.start("parent", [sys.executable, "-c", parent], log_path=tmp_path / "p.log")
    (grandchild,) = read_pids(tmp_path / "pids", 1)
    try:
        assert os.getpgid(grandchild) == child.pid
        fleet.stop()
        assert child.poll() is not None
        assert wait_until(lambda: gone(grandchild))
    finally:
        kill_quietly([grandchild])


def test_stop_kills_a_child_that_ignores_sigterm(fleet: Fleet, tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    fleet.grace_s = 0.5
    child = fleet.start("stubborn", [sys.executable, "-c", stubborn], log_path=tmp_path / "s.log")
    assert wait_until(lambda: "ready" in child.log_tail())
    started = time.monotonic()
    fleet.stop()
    assert child.poll() == -signal.SIGKILL
    assert time.monotonic() - started < 5.0


def test_failed_names_the_child_that_died(fleet: Fleet, tmp_path: Path) -> None:
    sleeper = fleet.start("sleeper", SLEEPER, log_path=tmp_path / "a.log")
    code = "import sys; print('cannot load the dataset'); sys.exit(3)"
    dying = fleet.start("dying", [sys.executable, "-c", code], log_path=tmp_path / "b.log")
    assert wait_until(lambda: fleet.failed() is not None)
    assert fleet.failed() is dying
    assert dying.poll() == 3
    assert "cannot load the dataset" in dying.log_tail()
    assert fleet.running() == [sleeper]


def test_failed_counts_a_clean_exit_only_for_must_run(fleet: Fleet, tmp_path: Path) -> None:
    done = fleet.start("done", [sys.executable, "-c", "pass"], log_path=tmp_path / "d.log")
    assert fleet.wait([done], timeout_s=DEADLINE_S)
    assert fleet.failed() is None
    assert fleet.failed(must_run=lambda child: child is done) is done


def test_log_tail_returns_the_last_lines(fleet: Fleet, tmp_path: Path) -> None:
    code = "for i in range(100): print('line', i)"
    child = fleet.start("counter", [sys.executable, "-c", code], log_path=tmp_path / "c.log")
    assert fleet.wait([child], timeout_s=DEADLINE_S)
    assert child.log_tail(3).splitlines() == ["line 97", "line 98", "line 99"]


def test_context_manager_stops_children(tmp_path: Path) -> None:
    with Fleet(grace_s=2.0) as fleet:
        child = fleet.start("sleeper", SLEEPER, log_path=tmp_path / "s.log")
    try:
        assert child.poll() is not None
    finally:
        kill_quietly([child.pid])


def test_wait_healthy_reports_a_child_that_exits(fleet: Fleet, tmp_path: Path) -> None:
    child = fleet.start(
        "agg", [sys.executable, "-c", "raise SystemExit(2)"], log_path=tmp_path / "l"
    )
    with pytest.raises(LaunchError, match="agg exited with code 2"):
        wait_healthy(f"http://127.0.0.1:{free_port()}", child=child, timeout_s=DEADLINE_S)


def test_wait_healthy_gives_up_after_the_timeout(fleet: Fleet, tmp_path: Path) -> None:
    child = fleet.start("agg", SLEEPER, log_path=tmp_path / "agg.log")
    with pytest.raises(LaunchError, match=r"did not answer GET .*/healthz within 1 s"):
        wait_healthy(f"http://127.0.0.1:{free_port()}", child=child, timeout_s=1.0)


def test_wait_healthy_returns_once_the_server_answers(fleet: Fleet, tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state.json"
    state.write_text('{"status": {}, "history": []}')
    server = Path(__file__).with_name("fake_aggregator.py")
    argv = [sys.executable, str(server), str(port), str(state)]
    child = fleet.start("agg", argv, log_path=tmp_path / "agg.log")
    wait_healthy(f"http://127.0.0.1:{port}", child=child, timeout_s=DEADLINE_S)
    assert child.poll() is None


def test_wait_healthy_stops_when_asked(fleet: Fleet, tmp_path: Path) -> None:
    child = fleet.start("agg", SLEEPER, log_path=tmp_path / "agg.log")
    stop = threading.Event()
    stop.set()
    with pytest.raises(LaunchError, match="stopped while waiting"):
        wait_healthy(f"http://127.0.0.1:{free_port()}", child=child, timeout_s=30, stop=stop)


def test_fetch_json_returns_the_body_or_none() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status":
            return httpx.Response(200, json={"round": 2})
        if request.url.path == "/broken":
            return httpx.Response(200, content=b"not json")
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(503, json={"error": "storage_unavailable"})

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://agg") as client:
        assert fetch_json(client, "/status") == {"round": 2}
        assert fetch_json(client, "/broken") is None
        assert fetch_json(client, "/down") is None
        assert fetch_json(client, "/history") is None


def test_stop_signals_set_a_flag_then_interrupt() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    with stop.installed():
        signal.raise_signal(signal.SIGTERM)  # runs the handler before returning
        assert stop.event.is_set()
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def run_script(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    """Start a script that starts two sleepers with a Fleet, writes their PIDs, then `body`."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from pathlib import Path
        from shared.runs.launch import Fleet, StopSignals
        # Python leaves SIGINT alone when it starts with SIGINT ignored, as under `cmd &`
        # in a non-interactive shell: make Ctrl-C raise KeyboardInterrupt here regardless
        signal.signal(signal.SIGINT, signal.default_int_handler)
        SLEEPER = {SLEEPER!r}
        log = Path({str(tmp_path / "s.log")!r})
        pids = Path({str(tmp_path / "pids")!r})
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", script], text=True)


def check_orphans(script: subprocess.Popen[str], tmp_path: Path, send: int | None) -> int:
    pids = read_pids(tmp_path / "pids", 2)
    try:
        if send is not None:
            script.send_signal(send)
        code = script.wait(timeout=DEADLINE_S)
        assert wait_until(lambda: all(gone(pid) for pid in pids))
        return code
    finally:
        kill_quietly([*pids, script.pid])
        script.wait(timeout=DEADLINE_S)


def test_no_child_survives_an_interrupted_runner(tmp_path: Path) -> None:
    script = run_script(
        tmp_path,
        """
        stop = StopSignals()
        with stop.installed(), Fleet(grace_s=2.0) as fleet:
            kids = [fleet.start(f"k{i}", SLEEPER, log_path=log) for i in range(2)]
            pids.write_text(" ".join(str(k.pid) for k in kids))
            stop.event.wait(60)
        sys.exit(128 + (stop.signum or 0))
        """,
    )
    assert check_orphans(script, tmp_path, signal.SIGINT) == 128 + signal.SIGINT


def test_no_child_survives_a_keyboard_interrupt(tmp_path: Path) -> None:
    script = run_script(
        tmp_path,
        """
        with Fleet(grace_s=2.0) as fleet:
            kids = [fleet.start(f"k{i}", SLEEPER, log_path=log) for i in range(2)]
            pids.write_text(" ".join(str(k.pid) for k in kids))
            time.sleep(60)
        """,
    )
    assert check_orphans(script, tmp_path, signal.SIGINT) != 0


def test_atexit_stops_children_that_were_not_stopped(tmp_path: Path) -> None:
    script = run_script(
        tmp_path,
        """
        fleet = Fleet(grace_s=2.0).__enter__()
        kids = [fleet.start(f"k{i}", SLEEPER, log_path=log) for i in range(2)]
        pids.write_text(" ".join(str(k.pid) for k in kids))
        sys.exit(0)
        """,
    )
    assert check_orphans(script, tmp_path, None) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_with_a_killed_runner(tmp_path: Path) -> None:
    script = run_script(
        tmp_path,
        """
        fleet = Fleet()
        kids = [fleet.start(f"k{i}", SLEEPER, log_path=log) for i in range(2)]
        pids.write_text(" ".join(str(k.pid) for k in kids))
        time.sleep(60)
        """,
    )
    assert check_orphans(script, tmp_path, signal.SIGKILL) == -signal.SIGKILL
