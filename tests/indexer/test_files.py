"""indexer.files: files are wholly old or wholly new, even when the writer is killed; hashes."""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest

from indexer.files import remove_leftovers, replace_atomically, sha256_file, write_json
from tests.support import REPO, child_env

# Replaces argv[1] with a file of argv[2] bytes of b"n", but is killed (SIGKILL, by itself) half
# way through writing it.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from indexer.files import replace_atomically

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"n" * (int(sys.argv[2]) // 2))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

replace_atomically(Path(sys.argv[1]), write)
"""

# Reads argv[1] (a file of one repeated byte, argv[2] bytes long, that another process keeps
# replacing with one of another byte) until it has seen the contents change 20 times or found a
# torn read; prints how many reads were whole files and how many were not.
READER = """
import sys
from pathlib import Path
path, size = Path(sys.argv[1]), int(sys.argv[2])
whole = torn = changes = 0
last = None
while changes < 20 and not torn:
    data = path.read_bytes()
    if len(data) == size and data.count(data[:1]) == size:
        whole += 1
        changes += last is not None and data[:1] != last
        last = data[:1]
    else:
        torn += 1
print(whole, torn, flush=True)
"""


def test_replace_leaves_the_new_file_and_no_temp_file(tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"old")
    replace_atomically(path, lambda tmp: tmp.write_bytes(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"old")

    def write(tmp):
        tmp.write_bytes(b"half of the n")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, write)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss"]


def test_a_writer_killed_mid_write_leaves_the_old_file_and_a_temp_file_the_next_writer_removes(
        tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"o" * 100_000)
    (tmp_path / "gallery.db").write_bytes(b"not a temp file")
    (tmp_path / "notes.tmp").write_bytes(b"not hidden: not ours")
    child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), "100000"],
                           env=child_env(), cwd=REPO, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert path.read_bytes() == b"o" * 100_000
    leftovers = [p.name for p in tmp_path.glob(".*.tmp")]
    assert leftovers and all(name.startswith(".index.faiss.") for name in leftovers)
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.db", "index.faiss", "notes.tmp"]


def test_a_reader_in_another_process_never_sees_half_a_file(tmp_path):
    size = 1 << 20
    path = tmp_path / "index.faiss"
    path.write_bytes(b"a" * size)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(size)],
                              stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO)
    try:
        deadline = time.monotonic() + 300  # a bound, not a measurement: the reader stops itself
        replaced = 0
        while reader.poll() is None and time.monotonic() < deadline:
            data = (b"b" if replaced % 2 == 0 else b"a") * size
            replace_atomically(path, lambda tmp: tmp.write_bytes(data))
            replaced += 1
        if reader.poll() is None:
            pytest.fail(f"the reader did not see 20 changes in {replaced} replacements")
        whole, torn = map(int, reader.stdout.read().split())
    finally:
        if reader.poll() is None:
            reader.kill()
        reader.wait(timeout=60)
        reader.stdout.close()
    assert torn == 0 and whole >= 21  # it saw 20 changes, each read a whole file


def test_write_json_writes_indented_json_with_a_final_newline(tmp_path):
    path = tmp_path / "gallery.json"
    write_json(path, {"format": 1, "gallery_id": "x"})
    write_json(path, {"format": 2, "names": ["a", "b"]})
    assert json.loads(path.read_text()) == {"format": 2, "names": ["a", "b"]}
    assert path.read_text() == json.dumps({"format": 2, "names": ["a", "b"]}, indent=2) + "\n"


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_sha256_file_is_the_sha256_of_the_contents_whatever_the_chunk(tmp_path, chunk):
    data = bytes(range(256)) * 1000 + b"tail"
    (tmp_path / "image.png").write_bytes(data)
    assert sha256_file(tmp_path / "image.png", chunk=chunk) == hashlib.sha256(data).hexdigest()
