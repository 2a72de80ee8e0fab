"""Original images outside the database: a content-addressed folder, or an fsspec URL; the
database keeps only the key. Real galleries on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from indexer import Gallery
from indexer.errors import OriginalsUnavailable
from indexer.store import IMAGES
from tests.support import free_port


def stored_bytes(gallery: Gallery) -> list:
    with gallery._store.read() as conn:
        return list(conn.execute(select(IMAGES.c.data)).scalars())


def test_originals_in_a_folder(tmp_path, model_embedder, png_folder, db_url):
    files = sorted(png_folder.rglob("*.png"))[:3]
    with Gallery.create(tmp_path / "g", model_embedder, url=db_url,
                        originals=str(tmp_path / "originals")) as gallery:
        ids = gallery.add(files, labels="x")
        gallery_id = gallery.record.gallery_id
        sha = hashlib.sha256(files[1].read_bytes()).hexdigest()
        on_disk = tmp_path / "originals" / gallery_id / sha[:2] / sha
        assert on_disk.read_bytes() == files[1].read_bytes()
        assert stored_bytes(gallery) == [None, None, None]  # the database keeps only the key
        assert gallery.image(ids[1]) == (files[1].read_bytes(), "image/png")
        assert gallery.stats().originals == str((tmp_path / "originals").resolve())
        gallery.remove(ids[1])
        assert not on_disk.exists()  # a delete removes the object
    with Gallery.open(tmp_path / "g", model_embedder, url=db_url) as reopened:
        assert reopened.image(ids[0])[0] == files[0].read_bytes()


def test_originals_behind_an_fsspec_url(tmp_path, model_embedder, png_folder, db_url):
    import fsspec

    files = sorted(png_folder.rglob("*.png"))[:2]
    url = f"memory://bench-{tmp_path.name}"
    with Gallery.create(tmp_path / "g", model_embedder, url=db_url, originals=url) as gallery:
        ids = gallery.add(files)
        fs = fsspec.filesystem("memory")
        assert len(fs.find(f"/bench-{tmp_path.name}")) == 2
        assert gallery.image(ids[0])[0] == files[0].read_bytes()
        gallery.remove(ids[0])
        assert len(fs.find(f"/bench-{tmp_path.name}")) == 1


def test_an_unreachable_originals_store_refuses_the_add_and_changes_nothing(
        tmp_path, model_embedder, png_folder, db_url):
    files = sorted(png_folder.rglob("*.png"))[:2]
    store = tmp_path / "originals"
    with Gallery.create(tmp_path / "g", model_embedder, url=db_url, originals=str(store)) as gallery:
        gallery.add(files[:1])
        generation = gallery.stats().generation
        blocked = store / gallery.record.gallery_id
        for path in sorted(blocked.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        blocked.rmdir()
        blocked.write_text("a file where the store's folder was: nothing can be written")
        with pytest.raises(OriginalsUnavailable, match=f"the originals store {store} cannot be "
                                                       "reached"):
            gallery.add(files[1:])
        assert len(gallery) == 1 and gallery.stats().generation == generation
        with pytest.raises(OriginalsUnavailable):
            gallery.image(gallery.items(limit=1)[0].id)


@pytest.fixture
def s3(tmp_path):
    """A real S3-compatible server on 127.0.0.1 (moto's), with a bucket, and fsspec set to use
    it (as `FSSPEC_S3_ENDPOINT_URL` and the AWS variables would in a deployment)."""
    import fsspec.config

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = dict(fsspec.config.conf)
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint, "key": "test", "secret": "test",
                                "config_kwargs": {"retries": {"max_attempts": 1},
                                                  "connect_timeout": 2}}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("originals")
        yield server, fs
    finally:
        fsspec.config.conf.clear()
        fsspec.config.conf.update(saved)
        server.kill()
        server.wait()


def test_originals_in_an_s3_bucket(tmp_path, model_embedder, png_folder, db_url, s3):
    server, fs = s3
    files = sorted(png_folder.rglob("*.png"))[:3]
    with Gallery.create(tmp_path / "g", model_embedder, url=db_url,
                        originals="s3://originals/shop") as gallery:
        ids = gallery.add(files[:2])
        keys = fs.find("originals/shop")
        assert len(keys) == 2 and all(gallery.record.gallery_id in k for k in keys)
        assert stored_bytes(gallery) == [None, None]
        assert gallery.image(ids[1])[0] == files[1].read_bytes()
        gallery.remove(ids[0])
        assert len(fs.find("originals/shop")) == 1  # the delete removed the object
        server.kill()  # the store goes away
        server.wait()
        generation = gallery.stats().generation
        with pytest.raises(OriginalsUnavailable, match="the originals store s3://originals/shop "
                                                       "cannot be reached"):
            gallery.add(files[2:])
        assert len(gallery) == 1 and gallery.stats().generation == generation
