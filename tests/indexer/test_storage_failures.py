"""When the file system refuses a write: a change the database committed is kept and answered as
committed, and what cannot be stored is refused in one clear line (CLI) or status (API)."""
from __future__ import annotations

import errno
import os

import pytest
import sqlalchemy.exc

from indexer import Gallery
from indexer.errors import GalleryError, OriginalsUnavailable
from indexer.vectors import INDEX_FILE
from scripts.common import failure_line
from webapp.errors import status_of


def test_a_committed_add_survives_an_index_file_that_cannot_be_saved(tmp_path, model_embedder,
                                                                     png_folder, caplog, db_url):
    files = sorted(png_folder.rglob("*.png"))[:4]
    with Gallery.create(tmp_path / "g", model_embedder, url=db_url) as gallery:
        gallery.add(files[:2], labels="x")
        saved = (gallery.path / INDEX_FILE).read_bytes()
        # A folder where the writer's temp file goes: the save fails as a full or read-only
        # file system would make it fail.
        (gallery.path / f".{INDEX_FILE}.{os.getpid()}.tmp").mkdir()
        with caplog.at_level("WARNING", logger="indexer"):
            ids = gallery.add(files[2:], labels="y")  # committed: answered, not raised
            gallery.flush()  # a snapshot, as is made when one is due and at close
        assert "the index file could not be saved" in caplog.text
        assert (gallery.path / INDEX_FILE).read_bytes() == saved  # the old file, whole
        assert len(gallery) == 4
        (gallery.path / f".{INDEX_FILE}.{os.getpid()}.tmp").rmdir()
    with Gallery.open(tmp_path / "g", model_embedder, url=db_url) as reopened:  # caught up
        assert len(reopened) == 4 and reopened.get(ids[1]).label == "y"


def test_disk_full_and_database_failures_are_one_line_and_a_clear_status():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/srv/g/gallery.db")
    assert failure_line(full) == ("disk full: nothing more could be written "
                                  "(/srv/g/gallery.db: No space left on device)")
    assert status_of(full)[:2] == (507, "insufficient_storage")
    assert "/srv" not in status_of(full)[2]  # the API never shows server paths
    sqlite_full = sqlalchemy.exc.OperationalError("INSERT ...", {}, Exception(
        "database or disk is full"))
    assert failure_line(sqlite_full) == ("disk full: nothing more could be written "
                                         "(database or disk is full)")
    assert status_of(sqlite_full)[:2] == (507, "insufficient_storage")
    gone = sqlalchemy.exc.OperationalError("SELECT ...", {}, Exception(
        "could not connect to server: Connection refused"))
    assert failure_line(gone) == "database: could not connect to server: Connection refused"
    assert status_of(gone)[:2] == (503, "database_unavailable")
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), "/srv/g/index.faiss")
    assert status_of(read_only)[:2] == (503, "storage_unavailable")
    originals = OriginalsUnavailable("the originals store /srv/originals cannot be reached: "
                                     "Connection refused")
    assert failure_line(originals) == ("the originals store /srv/originals cannot be reached: "
                                       "Connection refused")
    assert status_of(originals)[:2] == (503, "storage_unavailable")
    assert "/srv" not in status_of(originals)[2]
    assert failure_line(ValueError("a bug")) is None  # not ours to hide: its traceback


def test_a_damaged_database_is_one_error_line(tmp_path, model_dir, png_folder, capsys):
    from scripts import index as index_cmd
    from scripts import search as search_cmd
    from tests.support import cli, error_line

    gallery = tmp_path / "g"
    code, _, err = cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir], capsys)
    assert code == 0, err
    (gallery / "gallery.db").write_bytes(b"this is not a database" * 200)
    for name in ("gallery.db-wal", "gallery.db-shm"):
        (gallery / name).unlink(missing_ok=True)
    query = sorted(png_folder.rglob("*.png"))[0]
    code, _, err = cli(search_cmd, [query, "--gallery", gallery], capsys)
    assert code == 2 and "Traceback" not in err
    assert error_line(err) == "error: database: file is not a database"


def test_open_says_the_database_is_damaged(tmp_path, model_embedder, png_folder):
    with Gallery.create(tmp_path / "g", model_embedder) as gallery:
        gallery.add(sorted(png_folder.rglob("*.png")), labels="x")
    db = tmp_path / "g" / "gallery.db"
    data = bytearray(db.read_bytes())
    data[-8192:-4096] = b"\xab" * 4096  # 4 KiB of garbage among the image pages
    db.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match=r"its database is damaged \(.+\); see what with "
                                           r"siamese-gallery check"):
        Gallery.open(tmp_path / "g", model_embedder)
