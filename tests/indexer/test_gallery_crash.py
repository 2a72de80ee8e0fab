"""Killed writers: a real child process, killed with SIGKILL in the middle of adding."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import sqlalchemy

from indexer import Gallery
from scripts import index as index_cmd
from tests.support import REPO, child_env, cli, write_fashion_pngs

pytestmark = pytest.mark.slow  # child processes that load TensorFlow, killed mid-write

ADD_IN_A_LOOP = """
import sys
from pathlib import Path
from encoder import Embedder
from indexer import Gallery
gallery = Gallery.open(sys.argv[1], Embedder.load(sys.argv[2]), url=sys.argv[4] or None)
files = sorted(Path(sys.argv[3]).rglob("*.png"))
for start in range(0, len(files), 8):
    gallery.add(files[start:start + 8])
    print(len(gallery), flush=True)
"""


def assert_consistent(gallery: Gallery, files) -> None:
    """Every item is whole: row, original bytes, and a vector that finds it."""
    by_source = {str(p): p for p in files}
    items = gallery.items(limit=10_000)
    assert len(items) == len(gallery) == gallery.stats().items
    for item in items:
        data, _ = gallery.image(item.id)
        assert data == by_source[item.source].read_bytes()
        best = gallery.search(data, k=1)[0]
        assert best.id == item.id and best.distance < 1e-3


def test_killed_in_the_middle_of_adds_leaves_whole_items_only(tmp_path, fashion_test,
                                                             model_embedder, model_dir, db_url):
    files = write_fashion_pngs(tmp_path / "photos", fashion_test, range(400))
    Gallery.create(tmp_path / "g", model_embedder, url=db_url).close()
    child = subprocess.Popen([sys.executable, "-c", ADD_IN_A_LOOP, tmp_path / "g", model_dir,
                              tmp_path / "photos", db_url or ""], stdout=subprocess.PIPE,
                             text=True, env=child_env())
    try:
        lines = [child.stdout.readline() for _ in range(5)]  # five adds done, the sixth under way
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL and lines[-1].strip() == "40"

    with Gallery.open(tmp_path / "g", model_embedder, url=db_url) as gallery:
        n = len(gallery)
        assert n >= 40 and n % 8 == 0, n  # each add is all or nothing
        assert n < 400, "the child finished before it was killed"
        assert_consistent(gallery, files)
        gallery.add(files)  # carries on where the child stopped
        assert len(gallery) == 400
        assert not list(gallery.path.glob(".*.tmp"))  # a killed writer's temp files are swept


def committed_items(gallery: Path, db_url: Optional[str]) -> int:
    """Items committed to the gallery's database so far (0 while it is being made)."""
    url = db_url or f"sqlite:///file:{gallery / 'gallery.db'}?mode=ro&uri=true"
    if db_url is None and not (gallery / "gallery.db").exists():
        return 0
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("select count(*) from items").scalar_one()
    except sqlalchemy.exc.DBAPIError:  # tables not made yet
        return 0
    finally:
        engine.dispose()


def test_killed_index_command_resumes(tmp_path, fashion_test, model_embedder, model_dir, capsys,
                                      db_url):
    files = write_fashion_pngs(tmp_path / "photos", fashion_test, range(600))
    gallery = tmp_path / "g"
    database = ["--db-url", db_url] if db_url else []
    child = subprocess.Popen([sys.executable, "-m", "scripts.index", tmp_path / "photos",
                              "--gallery", gallery, "--model", model_dir, "--batch-size", "16",
                              "--progress", "never", *database], env=child_env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        committed = 0
        deadline = time.monotonic() + 180  # generous: the child imports TensorFlow on a busy machine
        while committed < 48 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
            committed = committed_items(gallery, db_url)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        stderr = child.stderr.read().decode()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL, stderr
    assert 48 <= committed < 600

    code, out, _ = cli(index_cmd, [tmp_path / "photos", "--gallery", gallery, "--model", model_dir,
                                   "--json", *database], capsys)
    report = json.loads(out)["report"]
    assert code == 0 and report["failed"] == []
    assert report["added"] + report["skipped"] == 600 and report["skipped"] >= committed
    with Gallery.open(gallery, model_embedder, url=db_url) as g:
        assert_consistent(g, files)
        assert len(g) == 600


CREATE_KILLED_AFTER = """
import os, signal, sys
from encoder import Embedder
from indexer import Gallery, files, store
# Die (SIGKILL, no clean-up) right after the step named in argv[3] has done its work.
owner, name = {"database": (store.Store, "initialise"), "marker": (files, "replace_atomically"),
               "index": (files, "replace_atomically")}[sys.argv[3]]
real, calls = getattr(owner, name), []

def then_die(*args, **kwargs):
    real(*args, **kwargs)
    calls.append(args)
    # the marker is the first file written atomically, the index manifest comes later
    if sys.argv[3] != "index" or any(str(a[0]).endswith("index.json") for a in calls):
        os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, name, then_die)
Gallery.create(sys.argv[1], Embedder.load(sys.argv[2]), url=sys.argv[4] or None)
"""


@pytest.mark.parametrize("step", ["database", "marker", "index"])
def test_killed_while_creating_leaves_no_half_gallery(tmp_path, model_embedder, model_dir, step,
                                                     db_url):
    path = tmp_path / "galleries" / "g"
    done = subprocess.run([sys.executable, "-c", CREATE_KILLED_AFTER, path, model_dir, step,
                           db_url or ""], env=child_env(), cwd=REPO, capture_output=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    if step == "index":  # killed after the folder was in place: a gallery, its index repaired
        with Gallery.open(path, model_embedder, url=db_url) as gallery:
            assert len(gallery) == 0
        return
    assert not path.exists()  # nothing half-made where the gallery goes
    assert [p.name for p in path.parent.iterdir()][0].startswith(".g.creating.")
    with Gallery.create(path, model_embedder, url=db_url) as gallery:  # a second try just works
        assert len(gallery) == 0
    assert [p.name for p in path.parent.iterdir()] == ["g"]  # the leftover is gone
