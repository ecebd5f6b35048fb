"""Cap glibc's malloc arenas in the aggregator process, before its threads start.

glibc gives threads that contend for malloc arenas of their own (up to 8 per core), and
each arena keeps freed memory for reuse. The aggregator's thread pool decodes and folds
updates while the event loop reads bodies, so a round leaves several arenas holding a few
MiB each: about 6 MiB of resident memory that a cap of 2 arenas avoids, at no measured cost
in ingest speed (docs/benchmarks.md, "Aggregator memory"). The big buffers (bodies, sums)
are mmapped and never live in an arena.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable, Mapping

__all__ = ["M_ARENA_MAX", "cap_malloc_arenas", "user_chose_arenas"]

M_ARENA_MAX = -8  # from glibc's <malloc.h>
log = logging.getLogger("aggregator_service.malloc")

Mallopt = Callable[[int, int], int]


def user_chose_arenas(environ: Mapping[str, str]) -> bool:
    """Whether the environment already sets glibc's arena limit (it then wins)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return "MALLOC_ARENA_MAX" in environ or "glibc.malloc.arena_max" in tunables


def cap_malloc_arenas(
    arenas: int,
    environ: Mapping[str, str] = os.environ,
    mallopt: Mallopt | None = None,
) -> bool:
    """Limit glibc to `arenas` malloc arenas (0: leave it alone); return whether it did."""
    if arenas <= 0 or user_chose_arenas(environ):
        return False
    mallopt = mallopt or _glibc_mallopt()
    if mallopt is None:
        return False
    if mallopt(M_ARENA_MAX, arenas) != 1:  # mallopt answers 1 on success
        log.warning("could not cap malloc arenas at %d", arenas)
        return False
    return True


def _glibc_mallopt() -> Mallopt | None:
    """Return glibc's mallopt, or None on another C library or system."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it: musl's mallopt is a no-op)
        function = libc.mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return function
