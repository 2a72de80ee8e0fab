"""indexer.lock.WriterLock: one writer at a time across processes, held by a real child process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from indexer.errors import GalleryError
from indexer.lock import WriterLock
from tests.support import REPO, child_env

# Takes the lock, says so, and waits for a line on stdin before each next step:
# release, then exit. It prints what a non-blocking attempt got when asked to "try".
HOLDER = """
import sys
from indexer.lock import WriterLock
lock = WriterLock(sys.argv[1])
if sys.argv[2] == "try":
    print(lock.acquire(blocking=False), flush=True)
    sys.exit(0)
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


class Holder:
    """A child process that holds the lock at `path` until told to release it."""

    def __init__(self, path):
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "hold"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=child_env(), cwd=REPO)
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "released"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.fixture
def holder(tmp_path):
    """Start a holder of `tmp_path / "writer.lock"` with `holder()`; stopped after the test."""
    started = []

    def start() -> Holder:
        started.append(Holder(tmp_path / "writer.lock"))
        return started[-1]

    yield start
    for h in started:
        h.close()


def other_process_gets_it(path) -> bool:
    """Whether a new process's non-blocking acquire of `path` succeeds."""
    done = subprocess.run([sys.executable, "-c", HOLDER, str(path), "try"], capture_output=True,
                          text=True, env=child_env(), cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return {"True": True, "False": False}[done.stdout.strip()]


def test_a_lock_held_by_another_process_times_out_with_a_gallery_error_naming_it(tmp_path,
                                                                                 holder):
    h = holder()
    lock = WriterLock(tmp_path / "writer.lock", timeout=0.3)
    with pytest.raises(GalleryError) as error:
        lock.acquire()
    # The gallery's name, never its path (the message can reach an API client).
    assert str(error.value) == (f"gallery {tmp_path.name!r} is busy: another process "
                                f"(pid {h.process.pid}) is writing to it; waited 0.3 s for it "
                                "to finish")
    assert not lock.held


def test_non_blocking_acquire_is_false_while_another_process_holds_it(tmp_path, holder):
    h = holder()
    lock = WriterLock(tmp_path / "writer.lock")
    assert lock.acquire(blocking=False) is False and not lock.held
    h.release()
    assert lock.acquire(blocking=False) is True and lock.held
    lock.release()


def test_a_waiting_writer_gets_the_lock_when_the_holder_releases_it(tmp_path, holder):
    h = holder()
    lock = WriterLock(tmp_path / "writer.lock", timeout=120)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: lock.acquire() and got.set())
    waiter.start()
    try:
        assert not got.wait(0.5)  # it cannot have the lock while the child holds it
        h.release()
        waiter.join(timeout=120)
        assert got.is_set() and lock.held
    finally:
        waiter.join(timeout=120)
        lock.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    h = holder()
    assert not WriterLock(tmp_path / "writer.lock").acquire(blocking=False)
    h.process.send_signal(signal.SIGKILL)
    h.process.wait(timeout=60)
    lock = WriterLock(tmp_path / "writer.lock", timeout=0)
    assert lock.acquire(blocking=False) is True
    lock.release()


def test_the_holder_excludes_other_processes_and_writes_its_pid(tmp_path):
    path = tmp_path / "writer.lock"
    with WriterLock(path) as lock:
        assert lock.held
        assert path.read_text() == f"{os.getpid()}\n"
        assert other_process_gets_it(path) is False
    assert not lock.held
    assert other_process_gets_it(path) is True


def test_nested_acquires_hold_until_the_outermost_release(tmp_path):
    path = tmp_path / "writer.lock"
    lock = WriterLock(path)
    assert lock.acquire() and lock.acquire()
    lock.release()
    assert lock.held and other_process_gets_it(path) is False
    lock.release()
    assert not lock.held and other_process_gets_it(path) is True
    lock.release()  # one release too many does nothing
    assert not lock.held


def test_a_lock_file_that_cannot_be_opened(tmp_path):
    lock = WriterLock(tmp_path / "no such folder" / "writer.lock")
    assert lock.acquire(blocking=False) is False  # e.g. a read-only gallery: readers carry on
    with pytest.raises(FileNotFoundError, match=r"cannot open the gallery's lock file to write: No "
                                                r"such file"):
        lock.acquire()
