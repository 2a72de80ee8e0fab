"""The change log: readers catch up by replaying what changed (not by reading every id), the index
file is a snapshot written when one is due, and several folders (servers) share one database.
Real galleries on SQLite and PostgreSQL, the real model."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from indexer import Gallery, replica
from indexer.store import CHANGES
from indexer.vectors import INDEX_FILE, MANIFEST_FILE


def log_rows(gallery: Gallery) -> list[tuple[int, str]]:
    with gallery._store.read() as conn:
        return [(r.generation, r.op) for r in conn.execute(
            CHANGES.select().order_by(CHANGES.c.generation))]


@pytest.fixture
def shared_url(db_url, tmp_path) -> str:
    """One database for several gallery folders: PostgreSQL, or a SQLite file outside them."""
    return db_url or f"sqlite:///{tmp_path / 'shared.db'}"


def test_each_change_is_logged_and_a_reader_replays_only_what_changed(gallery, model_embedder,
                                                                      fashion_test, db_url,
                                                                      caplog):
    reader = Gallery.open(gallery.path, model_embedder, url=db_url)
    start = gallery.stats().generation
    added = gallery.add(fashion_test.images[300:303], labels="new")
    gallery.remove([added[0], gallery.items(limit=1)[0].id])
    gallery.set_verdict(operating_point="far-1e-2")
    assert log_rows(gallery)[-3:] == [(start + 1, "add"), (start + 2, "remove"),
                                      (start + 3, "record")]
    with caplog.at_level("DEBUG", logger="indexer"):
        assert reader.refresh() is True
    assert "replayed generations" in caplog.text and "comparing ids" not in caplog.text
    assert len(reader) == 48 + 3 - 2 == len(gallery)
    assert reader.search(fashion_test.images[301], k=1)[0].id == added[1]
    assert reader.rule().operating_point == "far-1e-2"
    reader.close()


def test_a_small_change_does_not_rewrite_the_index_file(gallery, fashion_test):
    before = (gallery.path / INDEX_FILE).read_bytes()
    gallery.add(fashion_test.images[500:502])
    gallery.remove(gallery.items(limit=1)[0].id)
    assert (gallery.path / INDEX_FILE).read_bytes() == before  # not due: the log has them
    gallery.close()  # ... and closing writes the snapshot
    assert (gallery.path / INDEX_FILE).read_bytes() != before


def test_a_snapshot_is_written_once_a_share_has_changed(gallery, fashion_test, monkeypatch):
    monkeypatch.setattr(replica, "SNAPSHOT_MIN_CHANGES", 10)
    gallery.flush()  # a snapshot of the fixture's 48 items
    manifest = gallery.path / MANIFEST_FILE
    saved = manifest.read_text()
    gallery.add(fashion_test.images[600:605])  # 5 changed: under 10 (and under 10% of 53)
    assert manifest.read_text() == saved
    gallery.add(fashion_test.images[605:611])  # 11 changed since the last snapshot
    assert manifest.read_text() != saved


def test_a_reader_behind_a_compacted_log_compares_ids_once(tmp_path, model_embedder, fashion_test,
                                                          shared_url, caplog, monkeypatch):
    """A server whose own index file and memory are older than the log reaches: it compares all
    ids, once, and is then in line."""
    writer = Gallery.create(tmp_path / "a" / "g", model_embedder, url=shared_url)
    writer.add(fashion_test.images[:10])
    reader = Gallery.open(tmp_path / "b" / "g", model_embedder, url=shared_url)  # at generation 1
    monkeypatch.setattr(replica, "LOG_KEEP", 1)
    added = writer.add(fashion_test.images[700:704])
    writer.remove(added[:1])
    writer.flush()  # a snapshot in the writer's folder: the log keeps only its last change
    assert [op for _, op in log_rows(writer)] == ["remove"]
    with caplog.at_level("INFO", logger="indexer"):
        assert reader.refresh() is True
    assert "caught up from generation 1 to 3 by comparing ids: 3 added, 0 removed" in caplog.text
    assert reader._index.ids().tolist() == writer._index.ids().tolist()
    caplog.clear()
    writer.add(fashion_test.images[800:801])
    with caplog.at_level("INFO", logger="indexer"):
        assert reader.refresh() is True and len(reader) == 14
    assert "comparing ids" not in caplog.text  # in line again: the log serves it
    reader.close()
    writer.close()


def test_servers_with_their_own_folders_share_one_database(tmp_path, model_embedder, fashion_test,
                                                          shared_url):
    """Two servers (here, two folders in one process: separate locks, separate index files)
    sharing nothing but the database: each sees the other's changes at its next refresh, and
    the same image added by both at once becomes one item."""
    a = Gallery.create(tmp_path / "host-a" / "g", model_embedder, url=shared_url)
    a.add(fashion_test.images[:20], labels="first")
    b = Gallery.open(tmp_path / "host-b" / "g", model_embedder, url=shared_url)  # made for it
    assert (tmp_path / "host-b" / "g" / "gallery.json").is_file() and len(b) == 20
    [from_b] = b.add(fashion_test.images[20:21], labels="from b")
    assert a.refresh() and a.get(from_b).label == "from b" and len(a) == 21

    same = fashion_test.images[30:38]
    results = {}
    barrier = threading.Barrier(2)

    def add(name: str, gallery: Gallery) -> None:
        barrier.wait()
        results[name] = gallery.add(same)

    threads = [threading.Thread(target=add, args=(n, g)) for n, g in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results["a"] == results["b"] and len(set(results["a"])) == 8
    a.refresh()
    b.refresh()
    assert len(a) == len(b) == 29
    assert np.array_equal(a._index.ids(), b._index.ids())
    a.close()
    b.close()


def test_a_removed_vector_leaves_the_index_file_within_its_bound(gallery, monkeypatch):
    """A removal makes a snapshot due after `REMOVAL_SECONDS` (here 0), at the end of the write
    or at a reader's next refresh, so a deleted embedding does not linger in index.faiss."""
    monkeypatch.setattr(replica, "REMOVAL_SECONDS", 0.0)
    gallery.flush()
    victim = gallery.items(limit=1)[0].id
    vector = gallery.embeddings([victim])[1][0]
    assert vector.tobytes() in (gallery.path / INDEX_FILE).read_bytes()
    gallery.remove(victim)
    assert vector.tobytes() not in (gallery.path / INDEX_FILE).read_bytes()
