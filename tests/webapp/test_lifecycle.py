"""A worker lets go of what its app opened when it exits (gunicorn's worker_exit hook)."""
from __future__ import annotations

import shutil

import pytest

from tests.support import start_serve

pytestmark = pytest.mark.slow  # a real gunicorn, started and stopped


def test_each_worker_closes_its_gallery_when_stopped(tmp_path, template_gallery, model_dir):
    gallery = tmp_path / "gallery"
    shutil.copytree(template_gallery, gallery)
    live = start_serve(gallery, model_dir, tmp_path / "serve.log", workers=2)
    try:
        assert live.json("GET", "/healthz")[0] == 200
    finally:
        live.stop()
    log = live.log.read_text(errors="replace")
    assert live.process.returncode == 0
    assert log.count("closed its gallery") == 2, log[-2000:]
    # Each worker imports TensorFlow after the fork, and its C++ banner is filtered there too.
    assert "absl::InitializeLog" not in log and "oneDNN" not in log, log[-2000:]
    # The database's write-ahead log was folded back: nothing left beside gallery.db (an empty
    # log file stays when the two workers closed at the same moment).
    wal = gallery / "gallery.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
