"""Writing an update body to the journal while it arrives, so persistence overlaps the upload.

Written once the whole body is in, a 45 MB update costs its upload slot about 20 ms of
disk (and its checksum beside it) after the upload, before it can be folded and the slot
freed. `StreamedBody` follows the body instead as the socket fills its buffer: whenever a
few MiB more are in, the store's threads write that stretch to a temp file with
``O_DIRECT`` (straight from the page-aligned body buffer) and extend its checksum.
Once the update has been checked, `finish` writes the last stretch, fsyncs and hands the
temp file and its checksum to the store, which renames it into the round's directory; an
update that is refused is `discard`ed and its temp file deleted. A body that cannot go to
disk that way (small, not page-aligned, or a filesystem without direct I/O) is left to the
store's ordinary write of the whole body (journal.py).
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from aggregator_service.store.journal import (
    ALIGNMENT,
    DIRECT_FROM,
    NEW_FILE,
    O_DIRECT,
    Sum64,
    address,
    end_direct,
    open_direct,
)

__all__ = ["STEP", "StreamedBody"]

STEP = 4 << 20  # bytes that gather before a write or checksum step starts


class _Lane:
    """Runs `step(start, end)` over the growing prefix of a body, in order, one at a time."""

    def __init__(self, executor: Executor, step: Callable[[int, int], None]) -> None:
        self._executor = executor
        self._step = step
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._target = 0  # the lane may go up to here
        self._done = 0  # steps have covered [0, done)
        self._every = STEP  # a step waits until this many bytes are in (few, large steps)
        self._running = False
        self._stopped = False
        self._error: BaseException | None = None

    def extend(self, end: int, *, at_least: int = STEP) -> None:
        """Let the lane go on up to `end`, in steps of at least `at_least` bytes.

        Large steps keep the threads that run them from competing with the event loop
        for the GIL at every chunk the socket delivers.
        """
        with self._lock:
            self._target = max(self._target, end)
            self._every = max(at_least, 1)
            if self._running or self._stopped or self._error is not None:
                return
            if self._target - self._done < self._every:
                return
            self._running = True
            try:
                self._executor.submit(self._run)
            except RuntimeError as exc:  # the executor is shut down: the store is closing
                self._running, self._error = False, exc

    def complete(self, end: int) -> None:
        """Cover everything up to `end` (the rest on this thread); raise a step's error."""
        with self._lock:
            self._target = max(self._target, end)
            while self._running:
                self._idle.wait()
            if self._error is not None:
                raise self._error
            start = self._done
        if start < end:
            self._step(start, end)
            with self._lock:
                self._done = end

    def stop(self) -> None:
        """Start no more steps; wait for the one in progress."""
        with self._lock:
            self._stopped = True
            while self._running:
                self._idle.wait()

    def _run(self) -> None:
        while True:
            with self._lock:
                start, end = self._done, self._target
                if end - start < self._every or self._stopped or self._error is not None:
                    self._running = False
                    self._idle.notify_all()
                    return
            try:
                self._step(start, end)
            except BaseException as exc:  # handed to whoever completes the lane
                with self._lock:
                    self._error = exc
                continue
            with self._lock:
                self._done = end


class StreamedBody:
    """One update body, written to a temp file and checksummed while it arrives."""

    def __init__(self, directory: Path, executor: Executor) -> None:
        self.path = directory / f".{uuid.uuid4().hex}.tmp"  # swept at start-up if left over
        self._executor = executor
        self._view: memoryview | None = None
        self._fd: int | None = None
        self._sum = Sum64()
        self._writes: _Lane | None = None
        self._sums: _Lane | None = None

    @property
    def following(self) -> bool:
        """Whether a body is being followed (and a temp file may exist)."""
        return self._writes is not None

    def start(self, buffer: memoryview) -> None:
        """Follow `buffer` as it fills, if it can be written with direct I/O."""
        view = memoryview(buffer).cast("B")
        if not O_DIRECT or view.nbytes < DIRECT_FROM or address(view) % ALIGNMENT:
            return
        self._view = view
        self._writes = _Lane(self._executor, self._write)
        self._sums = _Lane(self._executor, self._checksum)

    def advance(self, filled: int) -> None:
        """Note that the first `filled` bytes of the buffer are in (on the event loop)."""
        if self._writes is not None and self._sums is not None:
            aligned = filled - filled % ALIGNMENT  # Sum64 too goes a sector at a time
            self._writes.extend(aligned)
            self._sums.extend(aligned)

    def finish(
        self, body: bytes | bytearray | memoryview, *, durable: bool = True
    ) -> tuple[Path, str] | None:
        """Write (and if `durable` fsync) all of `body`; return its temp file and checksum.

        None: the body followed was not `body` (e.g. shorter than its buffer), or this
        filesystem refuses direct I/O; the caller then writes `body` itself. The temp file
        is the caller's once this returns it.
        """
        if self._view is None or self._writes is None or self._sums is None:
            return None
        size = self._view.nbytes
        if memoryview(body).nbytes != size:
            self.discard()
            return None
        aligned = size - size % ALIGNMENT  # at least DIRECT_FROM: the write lane opens the file
        self._sums.extend(size, at_least=1)  # the checksum's last stretch, beside the write
        try:
            self._writes.complete(aligned)
        except _NoDirectIO:
            self.discard()
            return None
        fd = self._fd
        if fd is None:  # cannot be: the write lane opened it for the aligned part
            raise _NoDirectIO("the journal temp file was never opened")
        end_direct(fd)
        _pwrite_all(fd, self._view, aligned, size)
        if durable:
            os.fsync(fd)
        self._sums.complete(size)
        self._close()
        self._writes = self._sums = None
        self._view = None
        return self.path, self._sum.text()

    def discard(self) -> None:
        """Stop following the body and delete its temp file (after the step in progress)."""
        for lane in (self._writes, self._sums):
            if lane is not None:
                lane.stop()
        self._writes = self._sums = None
        self._view = None
        self._close()
        self.path.unlink(missing_ok=True)

    def _write(self, start: int, end: int) -> None:
        fd = self._fd if self._fd is not None else self._open()
        if fd is None or self._view is None:
            raise _NoDirectIO("the journal's filesystem refuses direct I/O")
        try:
            _pwrite_all(fd, self._view, start, end)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # e.g. a device wanting a larger alignment
                raise
            raise _NoDirectIO(f"a direct write was refused: {exc}") from exc

    def _checksum(self, start: int, end: int) -> None:
        if self._view is not None:
            self._sum.update(self._view[start:end])

    def _open(self) -> int | None:
        """Create the temp file for direct I/O; None if the filesystem refuses it."""
        self._fd = open_direct(self.path, NEW_FILE)
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _NoDirectIO(OSError):
    """The filesystem of the journal refuses O_DIRECT."""


def _pwrite_all(fd: int, view: memoryview, start: int, end: int) -> None:
    while start < end:
        start += os.pwrite(fd, view[start:end], start)
