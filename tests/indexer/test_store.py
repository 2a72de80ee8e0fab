"""indexer.store: the gallery's tables in real SQLite files and real PostgreSQL databases (no
model, no index)."""
from __future__ import annotations

import datetime as dt
import sqlite3

import numpy as np
import pytest
from sqlalchemy import inspect

from encoder.errors import NotFoundError
from indexer.errors import GalleryError
from indexer.records import Original
from indexer.store import (GALLERY, IMAGES, ITEMS, SCHEMA_VERSION, Base, GalleryRecord,
                           Store)

DIM = 4
CREATED = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def record(**changes) -> GalleryRecord:
    values = dict(gallery_id="0f6b9d36-4c1e-4a57-9a8e-2f1f0c6f7a10", schema=SCHEMA_VERSION,
                  model_id="m1", embedding_dim=DIM, index="flat", threshold=None, generation=0,
                  next_id=1, created=CREATED)
    return GalleryRecord(**{**values, **changes})


def originals(n: int, start: int = 0) -> list[Original]:
    """`n` different tiny PNG images (2 x 1 pixels, values from `start`)."""
    return [Original.from_source(np.array([[i % 256, i // 256]], np.uint8))
            for i in range(start, start + n)]


@pytest.fixture
def url(tmp_path, db_url) -> str:
    """A SQLite file, or a new PostgreSQL database (`db_url`)."""
    return db_url or f"sqlite:///{tmp_path / 'gallery.db'}"


@pytest.fixture
def store(url):
    s = Store(url)
    s.initialise(record())
    yield s
    s.close()


def add(store: Store, items: list[Original], labels=None, metadata=None) -> list[int]:
    """Add `items` as the gallery does: one transaction that bumps the generation."""
    with store.write() as conn:
        _, first = store.next_generation(conn, len(items))
        vectors = np.arange(len(items) * DIM, dtype=np.float32).reshape(len(items), DIM)
        return store.insert(conn, range(first, first + len(items)), items,
                            labels or [None] * len(items),
                            metadata or [{}] * len(items), vectors, CREATED)


def test_initialise_then_read_the_record_back(store, url):
    assert store.has_gallery()
    with store.read() as conn:
        assert store.record(conn) == record()
    other = Store(url)  # another engine: the record is in the file
    try:
        with other.read() as conn:
            assert other.record(conn) == record()
    finally:
        other.close()


def test_initialise_refuses_a_database_that_already_holds_a_gallery(store, url):
    with pytest.raises(GalleryError, match="already holds a gallery"):
        Store(url).initialise(record(gallery_id="another"))
    with store.read() as conn:
        assert store.record(conn).gallery_id == record().gallery_id


def test_upgrade_adds_the_later_columns_to_a_schema_1_database(tmp_path):
    """A database written before `operating_point`, `fpir`, `originals` and the change log
    existed: upgrade adds them (empty), the record reads with them None, and they can then be
    set."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute('CREATE TABLE gallery (id INTEGER NOT NULL PRIMARY KEY, gallery_id VARCHAR(36) '
                'NOT NULL, schema INTEGER NOT NULL, model_id VARCHAR(64) NOT NULL, embedding_dim '
                'INTEGER NOT NULL, "index" VARCHAR(200) NOT NULL, threshold FLOAT, generation '
                'BIGINT NOT NULL, next_id BIGINT NOT NULL, created DATETIME NOT NULL)')
    old.execute("INSERT INTO gallery VALUES (1, 'g-old', 1, 'm0', 4, 'flat', 0.5, 7, 12, "
                "'2024-05-06 07:08:09.000000')")
    old.commit()
    old.close()
    store = Store(f"sqlite:///{path}")
    Base.metadata.create_all(store.engine, tables=[IMAGES, ITEMS])
    try:
        store.upgrade()
        store.upgrade()  # a second time does nothing
        columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(gallery)")]
        assert columns[-3:] == ["operating_point", "fpir", "originals"]
        assert inspect(store.engine).has_table("changes")  # the change log is there
        with store.read() as conn:
            upgraded = store.record(conn)
        assert (upgraded.gallery_id, upgraded.threshold, upgraded.generation,
                upgraded.next_id) == ("g-old", 0.5, 7, 12)
        assert upgraded.operating_point is None and upgraded.fpir is None
        assert upgraded.originals is None  # in the database, as before
        assert upgraded.created == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
        with store.write() as conn:
            store.update_record(conn, operating_point="far-1e-3", fpir=0.05)
        with store.read() as conn:
            assert (store.record(conn).operating_point, store.record(conn).fpir) == \
                ("far-1e-3", 0.05)
    finally:
        store.close()


def test_each_change_bumps_the_generation_and_ids_are_never_reused(store):
    first = add(store, originals(3))
    assert first == [1, 2, 3] and store.generation() == 1
    with store.write() as conn:
        store.next_generation(conn)
        store.delete(conn, [3])
    assert store.generation() == 2
    assert add(store, originals(2, start=10)) == [4, 5]  # not 3 again
    with store.read() as conn:
        assert store.ids(conn).tolist() == [1, 2, 4, 5]
        assert store.record(conn).next_id == 6


def test_a_change_that_fails_leaves_nothing_behind(store):
    add(store, originals(2))
    with pytest.raises(RuntimeError, match="embedding failed"):
        with store.write() as conn:
            _, first = store.next_generation(conn, 3)
            store.insert(conn, range(first, first + 3), originals(3, start=20), [None] * 3,
                         [{}] * 3,
                         np.zeros((3, DIM), np.float32), CREATED)
            raise RuntimeError("embedding failed")
    with store.read() as conn:
        assert store.count(conn) == 2 and store.generation(conn) == 1
        assert store.record(conn).next_id == 3
        assert len(conn.execute(IMAGES.select()).all()) == 2  # no orphaned image bytes


def test_another_connection_sees_a_commit_in_current_generation(store, url):
    reader = Store(url)
    try:
        assert reader.current_generation() == 0
        add(store, originals(1))
        assert reader.current_generation() == 1
        add(store, originals(1, start=1))
        assert reader.current_generation() == 2 == reader.generation()
    finally:
        reader.close()


def test_lookups_and_deletes_beyond_one_sql_in_list(store):
    """1,200 items: more than one IN (...) chunk of 500 for every lookup and the delete (which
    takes the image bytes with the rows)."""
    items = originals(1200)
    ids = add(store, items, labels=[f"L{i % 3}" for i in range(1200)],
              metadata=[{"n": i} for i in range(1200)])
    hashes = [o.sha256 for o in items]
    with store.read() as conn:
        assert store.known(conn, hashes + ["0" * 64]) == dict(zip(hashes, ids))
        assert store.missing(conn, ids + [5000, 5001]) == [5000, 5001]
        got = store.items(conn, ids)
        assert len(got) == 1200 and got[1100].metadata == {"n": 1099}
        assert got[1100].label == "L1" and got[1100].media_type == "image/png"
        assert store.labels(conn, ids)[1200] == "L2"
        assert store.label_counts(conn) == {"L0": 400, "L1": 400, "L2": 400}
        assert [i.id for i in store.list_items(conn, 10, 3, label="L1")] == [32, 35, 38]
    with store.write() as conn:
        store.next_generation(conn)
        store.delete(conn, ids[:700])
    with store.read() as conn:
        assert store.count(conn) == 500
        assert len(conn.execute(IMAGES.select()).all()) == 500  # their image bytes went too


def test_numpy_integer_ids_find_their_items(store):
    """The sqlite3 driver would bind NumPy integers as blobs, which match nothing."""
    ids = np.asarray(add(store, originals(3)), np.int64)
    with store.read() as conn:
        assert sorted(store.items(conn, ids)) == ids.tolist()
        assert store.missing(conn, ids) == []
        assert store.embeddings(conn, DIM, ids)[0].tolist() == ids.tolist()
    with store.write() as conn:
        store.delete(conn, ids[:1])
    with store.read() as conn:
        assert store.ids(conn).tolist() == ids[1:].tolist()


def test_image_bytes_and_embeddings_round_trip(store):
    items = originals(3)
    ids = add(store, items)
    with store.read() as conn:
        assert store.image(conn, ids[1]) == (items[1].data, "image/png")
        got_ids, vectors = store.embeddings(conn, DIM)
        assert got_ids.tolist() == ids and vectors.dtype == np.float32
        np.testing.assert_array_equal(vectors, np.arange(12, dtype=np.float32).reshape(3, DIM))
        assert store.originals(conn, after_id=1, limit=5) == [
            (ids[1], items[1].name, items[1].data), (ids[2], items[2].name, items[2].data)]
    with store.write() as conn:
        store.set_embeddings(conn, ids[:1], np.full((1, DIM), 0.5, np.float32))
    with store.read() as conn:
        assert store.embeddings(conn, DIM, ids[:1])[1].tolist() == [[0.5] * DIM]
        with pytest.raises(NotFoundError, match="no item 99 in the gallery"):
            store.image(conn, 99)


def test_a_damaged_embedding_is_named(store):
    ids = add(store, originals(3))
    with store.write() as conn:  # as damage would leave it
        conn.execute(ITEMS.update().where(ITEMS.c.id == ids[1]).values(embedding=b"\x00" * 5))
    with store.read() as conn, pytest.raises(GalleryError, match=(
            f"item {ids[1]} has a damaged embedding \\(1 item\\(s\\) in all\\); re-embed")):
        store.embeddings(conn, DIM)


def test_an_empty_gallery_table_is_an_error(store):
    with store.write() as conn:
        conn.execute(GALLERY.delete())
    with store.read() as conn, pytest.raises(GalleryError, match="gallery table is empty"):
        store.record(conn)


def test_the_change_log_holds_each_change_until_compacted(store):
    ids = add(store, originals(3))
    with store.write() as conn:
        store.log(conn, 1, "add", ids)
        generation, _ = store.next_generation(conn)
        store.delete(conn, ids[:1])
        store.log(conn, generation, "remove", np.asarray(ids[:1], np.int64))
    with store.read() as conn:
        changes = store.changes(conn, 0, 2)
        assert [(c.generation, c.op, c.ids.tolist()) for c in changes] == [
            (1, "add", ids), (2, "remove", ids[:1])]
        assert store.changes(conn, 1, 2)[0].op == "remove" and store.changes(conn, 2, 2) == []
        assert store.changes(conn, 0, 3) is None  # generation 3 is not (yet) in the log
    with store.write() as conn:
        assert store.compact_log(conn, 1) == 1
    with store.read() as conn:
        assert store.changes(conn, 0, 2) is None  # no longer reaches back to generation 1
        assert len(store.changes(conn, 1, 2)) == 1


def test_upgrade_adds_the_domain_score_to_the_items_of_an_older_database(tmp_path):
    """Items written before enrolment checked images: upgrade adds their `domain_score` column,
    empty (not checked), and they read as before."""
    path = tmp_path / "old.db"
    store = Store(f"sqlite:///{path}")
    store.initialise(record())
    with store.write() as conn:
        conn.exec_driver_sql("DROP TABLE items")
        conn.exec_driver_sql(
            "CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY, label VARCHAR(1000), source TEXT "
            "NOT NULL, sha256 VARCHAR(64) NOT NULL UNIQUE REFERENCES images (sha256), width "
            "INTEGER NOT NULL, height INTEGER NOT NULL, added DATETIME NOT NULL, metadata JSON "
            "NOT NULL, embedding BLOB NOT NULL)")
        conn.exec_driver_sql("INSERT INTO images VALUES ('ab', 'image/png', x'00')")
        conn.exec_driver_sql("INSERT INTO items VALUES (1, 'a', 'a.png', 'ab', 2, 2, "
                             "'2024-05-06 07:08:09.000000', '{}', x'0000803f')")
    try:
        store.upgrade()
        columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(items)")]
        assert columns[-1] == "domain_score"
        with store.read() as conn:
            item = store.items(conn, [1])[1]
            assert (item.label, item.domain_score) == ("a", None)
            assert store.unchecked(conn).tolist() == [1]
        with store.write() as conn:
            store.set_domain_scores(conn, {1: 2.5})
        with store.read() as conn:
            assert store.domain_scores(conn, [1]) == {1: 2.5} and not len(store.unchecked(conn))
    finally:
        store.close()
