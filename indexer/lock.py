"""One writer at a time: an exclusive `fcntl.flock` on the gallery's lock file.

The kernel drops the lock when its holder exits, even by SIGKILL, so a crashed writer never leaves
a stale lock behind. Readers never take it (SQLite in WAL mode and the atomically replaced index
file let them read while a writer works). POSIX only, like `fcntl`.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from .errors import GalleryError


class WriterLock:
    """One writer among the processes (`flock`) and among the threads of this process (a thread
    lock taken first); re-entrant for the thread that holds it: nested `acquire` calls count."""

    def __init__(self, path: Path, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0  # nested acquires by the holding thread
        self._thread = threading.RLock()
        # The thread that holds this process's turn (and holds, or waits for, the file lock).
        self.owner: int | None = None

    @property
    def held(self) -> bool:
        """Whether some thread of this process holds it."""
        return self._depth > 0

    @property
    def depth(self) -> int:
        """How deeply the holding thread has acquired it (1: the outermost hold)."""
        return self._depth

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock, waiting up to `timeout` seconds when `blocking`. False only when not
        blocking and another thread or process holds it; a timeout raises `GalleryError`."""
        deadline = time.monotonic() + (self.timeout if blocking else 0.0)
        if not self._thread.acquire(timeout=self.timeout if blocking else 0.0):
            if not blocking:
                return False
            raise GalleryError(f"gallery {self.path.parent.name!r} is busy: another request of "
                               f"this process held its writer lock for {self.timeout:g} s")
        if self._depth:
            self._depth += 1
            return True
        self.owner = threading.get_ident()
        try:
            taken = self._take_file_lock(blocking, deadline)
        except BaseException:
            self.owner = None
            self._thread.release()
            raise
        if not taken:
            self.owner = None
            self._thread.release()
        return taken

    def _take_file_lock(self, blocking: bool, deadline: float) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if not blocking:
                return False  # e.g. a read-only gallery: readers carry on without saving
            # A storage failure (`errors.storage_failure`): the API answers 503, commands say it
            # in one line.
            raise OSError(exc.errno, f"cannot open the gallery's lock file to write: "
                          f"{exc.strerror}", str(self.path)) from None
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder(fd)
                    os.close(fd)
                    if not blocking:
                        return False
                    # The gallery's name, not its path: this message may reach an API client.
                    raise GalleryError(
                        f"gallery {self.path.parent.name!r} is busy: another process{holder} is "
                        f"writing to it; waited {self.timeout:g} s for it to finish") from None
                # An add or a delete holds the lock for a few milliseconds, and under a steady
                # stream of them a waiter that sleeps longer leaves the lock idle while writers
                # queue (50 ms pauses: adds waited 70-490 ms in the web benchmark's mixed load).
                # A long wait (an import holds it for minutes) looks less often.
                time.sleep(0.002 if time.monotonic() - started < 1.0 else 0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._depth = fd, 1
        return True

    def release(self) -> None:
        if not self._depth or self.owner != threading.get_ident():
            return  # not held by this thread
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd, self.owner = None, None
        self._thread.release()

    @staticmethod
    def _holder(fd: int) -> str:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return f" (pid {text})" if text.isdigit() else ""

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
