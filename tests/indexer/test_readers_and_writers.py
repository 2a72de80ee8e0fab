"""Readers never wait for a writer: while a writer of this process waits for the gallery's lock
(held by another process), searches in this process go on."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np

from indexer import Gallery
from indexer.folder import LOCK_FILE

HOLD = """
import fcntl, sys
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_searches_go_on_while_a_writer_waits_for_another_process(tmp_path, model_embedder,
                                                                 png_folder, db_url):
    files = sorted(png_folder.rglob("*.png"))
    Gallery.create(tmp_path / "g", model_embedder, url=db_url).close()
    gallery = Gallery.open(tmp_path / "g", model_embedder, url=db_url, lock_timeout=120)
    gallery.add(files[:10], labels="x")
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "g" / LOCK_FILE)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        writer = threading.Thread(target=gallery.add, args=(files[10:12],), kwargs={"labels": "y"})
        writer.start()
        while gallery._lock.owner != writer.ident and writer.is_alive():
            time.sleep(0.01)
        # The writer has taken this process's turn and waits for the other process's lock.
        for _ in range(20):
            assert len(gallery.search(np.zeros((28, 28), np.uint8), k=3)) == 3
            assert len(gallery) == 10
        assert writer.is_alive()  # every search above ran while the writer was still waiting
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    writer.join(timeout=60)
    assert not writer.is_alive() and len(gallery) == 12
    gallery.close()
