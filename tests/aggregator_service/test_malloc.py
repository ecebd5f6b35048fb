"""The malloc arena cap: applied once at start-up, skipped when the user chose a limit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aggregator_service.malloc import M_ARENA_MAX, cap_malloc_arenas, user_chose_arenas


class FakeMallopt:
    """Records calls and answers like mallopt (1: done)."""

    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_the_cap_is_set_with_m_arena_max() -> None:
    mallopt = FakeMallopt()
    assert cap_malloc_arenas(2, environ={}, mallopt=mallopt) is True
    assert mallopt.calls == [(M_ARENA_MAX, 2)]


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_ARENA_MAX": "4"},
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=3"},
    ],
)
def test_a_limit_from_the_environment_wins(environ: dict[str, str]) -> None:
    mallopt = FakeMallopt()
    assert user_chose_arenas(environ)
    assert cap_malloc_arenas(2, environ=environ, mallopt=mallopt) is False
    assert mallopt.calls == []


def test_zero_leaves_glibc_alone_and_other_tunables_do_not_count() -> None:
    mallopt = FakeMallopt()
    assert not user_chose_arenas({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert cap_malloc_arenas(0, environ={}, mallopt=mallopt) is False
    assert mallopt.calls == []


def test_a_refused_cap_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    assert cap_malloc_arenas(2, environ={}, mallopt=FakeMallopt(answer=0)) is False
    assert "could not cap malloc arenas at 2" in caplog.text


COUNT_ARENAS = textwrap.dedent(
    """
    import ctypes, sys, threading
    from aggregator_service.malloc import cap_malloc_arenas

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    cap = int(sys.argv[1])
    print(cap_malloc_arenas(cap, environ={}))
    # Each new thread's first malloc takes an arena of its own while the cap allows it.
    threads = [threading.Thread(target=libc.malloc, args=(1000,)) for _ in range(6)]
    for thread in threads:
        thread.start()
        thread.join()
    out = libc.fopen(sys.argv[2].encode(), b"w")
    libc.malloc_info(0, out)
    libc.fclose(out)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
@pytest.mark.parametrize("cap", [0, 1])
def test_the_cap_holds_in_a_real_glibc_process(cap: int, tmp_path: Path) -> None:
    report = tmp_path / "malloc_info.xml"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run(
        [sys.executable, "-c", COUNT_ARENAS, str(cap), str(report)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert done.stdout.strip() == str(cap > 0)
    arenas = report.read_text().count("<heap nr=")
    if cap:
        assert arenas == cap
    else:
        assert arenas > 1  # glibc's own rule gave the threads arenas of their own
