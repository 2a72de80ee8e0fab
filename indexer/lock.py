"""One writer at a time: an exclusive `fcntl.flock` on the gallery's lock file.

The kernel drops the lock when its holder exits, even by SIGKILL, so a crashed writer never leaves
a stale lock behind. Readers never take it (SQLite in WAL mode and the atomically replaced index
file let them read while a writer works). POSIX only, like `fcntl`.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from .errors import GalleryError


class WriterLock:
    """Re-entrant within one object: nested `acquire` calls only count."""

    def __init__(self, path: Path, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock, waiting up to `timeout` seconds when `blocking`. False only when not
        blocking and another process holds it; a timeout raises `GalleryError`."""
        if self._depth:
            self._depth += 1
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if not blocking:
                return False  # e.g. a read-only gallery: readers carry on without saving
            raise GalleryError(f"{self.path}: cannot open the gallery's lock file ({exc.strerror})") \
                from None
        deadline = time.monotonic() + (self.timeout if blocking else 0.0)
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
                    raise GalleryError(
                        f"{self.path.parent}: another process{holder} is writing to this gallery; "
                        f"waited {self.timeout:g} s for it to finish") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._depth = fd, 1
        return True

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def _holder(fd: int) -> str:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return f" (pid {text})" if text.isdigit() else ""

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
