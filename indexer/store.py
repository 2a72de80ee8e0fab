"""The metadata store: SQLAlchemy tables for the gallery's own row (its record), its items, their
images, and the change log.

SQLite file by default; PostgreSQL (or any SQLAlchemy URL: the statements are plain Core SQL).
Every change is one transaction that also bumps `gallery.generation`, the counter the index
manifest records, so an item is either wholly present (row, embedding, image bytes) or absent, and
a reader can tell in one cheap query whether anything changed. The same transaction appends the
change (its generation, what it did, the item ids) to `changes`, so a reader whose index reflects
generation G catches up by reading the log after G: work in proportion to what changed, not to the
gallery. Item ids are allocated from `gallery.next_id` and never reused, so an id held by a client
can never point at a different image later.

Writers take turns on the gallery row: `write()` locks it first (SQLite: `BEGIN IMMEDIATE`;
PostgreSQL: `SELECT ... FOR UPDATE`), so writers in different processes or on different hosts,
sharing nothing but the database, each see the others' committed changes.
"""
from __future__ import annotations

import datetime as dt
import errno
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
from sqlalchemy import (JSON, BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, Text,
                        bindparam, create_engine, delete, event, func, insert, inspect, select,
                        update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from encoder.errors import ConfigError, NotFoundError

from .errors import GalleryError
from .originals import Originals, discard, open_originals
from .records import MAX_LABEL_LENGTH, Item, Original

SCHEMA_VERSION = 1
_CHUNK = 500  # ids or hashes per IN (...) list, well under every database's parameter limit


class Base(DeclarativeBase):
    pass


class GalleryRow(Base):
    """The one row that describes the gallery."""

    __tablename__ = "gallery"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    gallery_id: Mapped[str] = mapped_column(String(36))  # also in gallery.json and the index manifest
    schema: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(64))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    index: Mapped[str] = mapped_column(String(200))  # an IndexSpec, e.g. "hnsw:m=16,ef_construction=80,ef_search=64"
    threshold: Mapped[Optional[float]]  # None: the operating point's
    # The gallery's default verdict (`encoder.verdict`); None: "balanced" and FPIR 0.01. Added
    # after schema 1 was out: `Store.upgrade` adds them to older databases.
    operating_point: Mapped[Optional[str]] = mapped_column(String(40), nullable=True)
    fpir: Mapped[Optional[float]] = mapped_column(nullable=True)
    # Where the original image bytes are (`originals.py`); None: in `images.data`.
    originals: Mapped[Optional[str]] = mapped_column(String(1000), nullable=True)
    generation: Mapped[int] = mapped_column(BigInteger)  # +1 per committed change
    next_id: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ImageRow(Base):
    """Original image bytes, content-addressed by their sha256 (kept to serve and to re-embed)."""

    __tablename__ = "images"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64))
    data: Mapped[Optional[bytes]] = mapped_column(LargeBinary, nullable=True)  # None: in `originals`


class ItemRow(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=False)  # == the FAISS id
    label: Mapped[Optional[str]] = mapped_column(String(MAX_LABEL_LENGTH), index=True)
    source: Mapped[str] = mapped_column(Text)  # original path or upload name
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    added: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, embedding_dim values
    # The domain model's score of the image when it was added (`encoder.domain`); None: not
    # checked (a model without one, or an item added before enrolment checked images). Added
    # after schema 1 was out: `Store.upgrade` adds it to older databases.
    domain_score: Mapped[Optional[float]] = mapped_column(nullable=True)


class ChangeRow(Base):
    """One committed change: what the generation it made did to the index. Compacted (the oldest
    rows deleted) when an index snapshot is saved; a reader whose index is older than the log
    compares all ids instead."""

    __tablename__ = "changes"
    generation: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                            primary_key=True, autoincrement=False)
    # "add", "remove", "edit" (labels or metadata: no vector changes) or "record" (the gallery row)
    op: Mapped[str] = mapped_column(String(8))
    ids: Mapped[bytes] = mapped_column(LargeBinary)  # int64 little-endian item ids


class RevokedSessionRow(Base):
    """A web session signed out before it expired (`webapp.access`): its cookie is refused until
    then, on every worker and server that shares this database."""

    __tablename__ = "revoked_sessions"
    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    until: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


GALLERY, IMAGES, ITEMS, CHANGES = (GalleryRow.__table__, ImageRow.__table__, ItemRow.__table__,
                                   ChangeRow.__table__)
REVOKED = RevokedSessionRow.__table__
_ITEM_COLUMNS = [ITEMS.c.id, ITEMS.c.label, ITEMS.c.source, ITEMS.c.sha256, ITEMS.c.width,
                 ITEMS.c.height, IMAGES.c.media_type, ITEMS.c.added, ITEMS.c.metadata,
                 ITEMS.c.domain_score]


@dataclass(frozen=True)
class Change:
    generation: int
    op: str  # "add", "remove", "edit" or "record"
    ids: np.ndarray  # int64


@dataclass(frozen=True)
class GalleryRecord:
    gallery_id: str
    schema: int
    model_id: str
    embedding_dim: int
    index: str
    threshold: Optional[float]
    generation: int
    next_id: int
    created: dt.datetime
    operating_point: Optional[str] = None
    fpir: Optional[float] = None
    originals: Optional[str] = None


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)  # SQLite keeps no zone


def _score(value) -> float:
    """A domain score as stored: to 4 decimals, as answers show it, so that the same image
    scored in another batch (float rounding differs in the last bits) stores the same value."""
    return round(float(value), 4)


def _ints(ids: Sequence[int]) -> list[int]:
    """Plain ints: the sqlite3 driver binds NumPy integers as blobs, which match nothing."""
    return [int(i) for i in ids]


def _chunks(values: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _sqlite_setup(engine: Engine, read_only: bool) -> None:
    """WAL (readers never block the writer), foreign keys, a busy timeout, and real transactions:
    pysqlite does not emit BEGIN before a SELECT, so we emit it ourselves (SQLAlchemy's documented
    recipe) and reads inside one transaction see one snapshot. Writes take the lock up front."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # secure_delete: a deleted row's bytes are overwritten, not left in free pages.
        pragmas = ("foreign_keys=ON",) if read_only else (
            "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000",
            "secure_delete=ON")
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        writing = conn.get_execution_options().get("gallery_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


_GENERATION_SQL: dict[str, str] = {}  # dialect name -> the compiled generation query


class Store:
    """The tables behind one gallery, reached through one SQLAlchemy engine."""

    def __init__(self, url: str):
        self.url = url
        try:
            # pre-ping: a pooled connection that a database restart cut is replaced, not used
            self.engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        except ArgumentError:
            raise ConfigError("not a database URL (e.g. "
                              "postgresql+psycopg://user@host/dbname, sqlite:////path/g.db)") from None
        except ImportError as exc:
            extra = " (pip install 'siamese-search[postgres]')" if "postgres" in url else ""
            raise ConfigError(f"no driver for the database URL's scheme: {exc}{extra}") from None
        # A SQLite file on a folder that cannot be written (`folder.sqlite_url`): search only.
        self.read_only = "immutable=1" in url
        if self.engine.dialect.name == "sqlite":
            _sqlite_setup(self.engine, self.read_only)
        self._probe = None  # the DBAPI connection of `current_generation`
        self.originals_store: Optional[Originals] = None  # where image bytes go, if not in `images`

    def use_originals(self, record: GalleryRecord) -> None:
        """Keep image bytes where the gallery's record says (`originals.py`)."""
        self.originals_store = open_originals(record.originals, record.gallery_id)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        # SQLite folds the write-ahead log back only when the last connection closes, and two
        # processes closing at once may each see the other's: fold it back here, whoever is last.
        if self.engine.dialect.name == "sqlite" and not self.read_only:
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA busy_timeout=1000")  # not a writer's 30 s
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except DBAPIError:  # a database that is gone or busy: closing goes on
                pass
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One consistent snapshot."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction, writers one at a time (the gallery row locked first): committed at the
        end, rolled back on any exception."""
        if self.read_only:
            raise OSError(errno.EROFS, "the gallery's folder is read-only: it can be searched, "
                          "not changed", str(self.engine.url.database or "").split("?")[0]
                          .removeprefix("file:"))
        with self.engine.connect() as conn:
            conn = conn.execution_options(gallery_write=True)
            with conn.begin():
                if self.engine.dialect.name != "sqlite":  # SQLite: BEGIN IMMEDIATE did it
                    conn.execute(select(GALLERY.c.id).where(GALLERY.c.id == 1).with_for_update())
                yield conn

    # --- signed-out web sessions -------------------------------------------------------------------

    def revoke_session(self, sid: str, until: dt.datetime) -> None:
        """Refuse session `sid` until `until` (its own transaction, not the gallery's writer
        lock: a sign-out waits for no index write); the expired ones go at the same time."""
        if self.read_only:
            raise OSError(errno.EROFS, "the gallery's folder is read-only")
        with self.engine.begin() as conn:
            conn.execute(delete(REVOKED).where(REVOKED.c.until < dt.datetime.now(dt.timezone.utc)))
            conn.execute(delete(REVOKED).where(REVOKED.c.sid == sid))
            conn.execute(insert(REVOKED).values(sid=sid, until=until))

    def session_revoked(self, sid: str) -> bool:
        """Whether `sid` was signed out (never, in a read-only gallery of before the table)."""
        if self.read_only and not inspect(self.engine).has_table(REVOKED.name):
            return False
        with self.engine.connect() as conn:
            return conn.execute(select(REVOKED.c.sid).where(REVOKED.c.sid == sid)).first() \
                is not None

    # --- the gallery row -------------------------------------------------------------------------

    def initialise(self, record: GalleryRecord) -> None:
        if inspect(self.engine).has_table(GALLERY.name):
            raise GalleryError(f"{self.engine.url.render_as_string(hide_password=True)}: "
                               "already holds a gallery")
        Base.metadata.create_all(self.engine)
        with self.write() as conn:
            conn.execute(insert(GALLERY).values(id=1, **vars(record)))

    def drop(self) -> None:
        """Drop the gallery's tables (only for one that a killed creation left behind)."""
        Base.metadata.drop_all(self.engine)

    def has_gallery(self) -> bool:
        return inspect(self.engine).has_table(GALLERY.name)

    def upgrade(self) -> None:
        """Add what came after schema 1 to an older gallery: the nullable columns of the gallery
        row and of the items (the gallery works the same with them empty: items say they were
        not checked), and the change log (empty: readers compare ids until it has the changes
        they need). Not on a read-only database."""
        if self.read_only:
            return
        Base.metadata.create_all(self.engine, tables=[CHANGES, REVOKED])  # if they are not there
        found = inspect(self.engine)
        added = [(table, c) for table in (GALLERY, ITEMS)
                 for present in [{c["name"] for c in found.get_columns(table.name)}]
                 for c in table.columns if c.name not in present]
        if not added:
            return
        with self.write() as conn:
            for table, column in added:
                kind = column.type.compile(dialect=self.engine.dialect)
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')

    def record(self, conn: Connection) -> GalleryRecord:
        row = conn.execute(select(GALLERY).where(GALLERY.c.id == 1)).mappings().first()
        if row is None:
            raise GalleryError(f"{self.engine.url.render_as_string(hide_password=True)}: "
                               "gallery table is empty")
        values = {k: row[k] for k in GalleryRecord.__dataclass_fields__}
        return GalleryRecord(**{**values, "created": _utc(values["created"])})

    def update_record(self, conn: Connection, **values: Any) -> None:
        conn.execute(update(GALLERY).where(GALLERY.c.id == 1).values(**values))

    def generation(self, conn: Optional[Connection] = None) -> int:
        if conn is None:
            with self.read() as conn:
                return self.generation(conn)
        return int(conn.execute(select(GALLERY.c.generation).where(GALLERY.c.id == 1)).scalar_one())

    def current_generation(self) -> int:
        """`generation()` for the per-request change check, on a DBAPI connection kept for it:
        3 us on SQLite, against 400 us for a pooled SQLAlchemy connection and transaction
        (measured on 2 busy cores, 2026-12-02).
        Callers take turns (the gallery's mutex). Any database error: the regular path answers."""
        try:
            if self._probe is None:
                self._probe = self.engine.raw_connection()
            cursor = self._probe.cursor()
            try:
                cursor.execute(self._generation_sql())
                row = cursor.fetchone()
            finally:
                cursor.close()
                self._probe.rollback()  # leave no transaction open (PostgreSQL would)
            return int(row[0])
        except Exception:
            if self._probe is not None:
                self._probe.invalidate()
                self._probe = None
            return self.generation()

    def _generation_sql(self) -> str:
        sql = _GENERATION_SQL.get(self.engine.dialect.name)
        if sql is None:
            sql = _GENERATION_SQL[self.engine.dialect.name] = str(
                select(GALLERY.c.generation).where(GALLERY.c.id == 1).compile(
                    self.engine, compile_kwargs={"literal_binds": True}))
        return sql

    def next_generation(self, conn: Connection, new_ids: int = 0) -> tuple[int, int]:
        """Start a change: bump the generation and reserve `new_ids` ids.
        Returns (new generation, first reserved id)."""
        conn.execute(update(GALLERY).where(GALLERY.c.id == 1).values(
            generation=GALLERY.c.generation + 1, next_id=GALLERY.c.next_id + new_ids))
        generation, next_id = conn.execute(
            select(GALLERY.c.generation, GALLERY.c.next_id).where(GALLERY.c.id == 1)).one()
        return int(generation), int(next_id) - new_ids

    # --- the change log ------------------------------------------------------------------------

    def log(self, conn: Connection, generation: int, op: str, ids: Sequence[int] = ()) -> None:
        """Record in the log what the change that made `generation` did."""
        conn.execute(insert(CHANGES).values(
            generation=generation, op=op, ids=np.asarray(_ints(ids), "<i8").tobytes()))

    def changes(self, conn: Connection, after: int, upto: int) -> Optional[list[Change]]:
        """The changes that made generations `after`+1 .. `upto`, in order; None if the log no
        longer (or does not yet) holds all of them."""
        if upto <= after:
            return []
        rows = conn.execute(select(CHANGES).where(CHANGES.c.generation > after,
                                                  CHANGES.c.generation <= upto)
                            .order_by(CHANGES.c.generation)).all()
        if len(rows) != upto - after:
            return None
        return [Change(int(r.generation), r.op, np.frombuffer(bytes(r.ids), "<i8").astype(np.int64))
                for r in rows]

    def compact_log(self, conn: Connection, upto: int) -> int:
        """Drop the log's changes up to generation `upto`; how many were dropped."""
        return conn.execute(delete(CHANGES).where(CHANGES.c.generation <= upto)).rowcount

    # --- items -----------------------------------------------------------------------------------

    def known(self, conn: Connection, hashes: Sequence[str]) -> dict[str, int]:
        """{sha256: id} of the given hashes that are already in the gallery."""
        found: dict[str, int] = {}
        for chunk in _chunks(list(hashes)):
            rows = conn.execute(select(ITEMS.c.sha256, ITEMS.c.id).where(ITEMS.c.sha256.in_(chunk)))
            found.update({sha: int(i) for sha, i in rows})
        return found

    def insert(self, conn: Connection, ids: Sequence[int], originals: Sequence[Original],
               labels: Sequence[Optional[str]], metadata: Sequence[dict[str, Any]],
               embeddings: np.ndarray, added: Union[dt.datetime, Sequence[dt.datetime]],
               domain_scores: Optional[Sequence[Optional[float]]] = None) -> list[int]:
        """Store new items under `ids` (reserved by `next_generation`, or kept from an export),
        with their images' domain scores (None: not checked)."""
        ids = [int(i) for i in ids]
        scores = [None] * len(ids) if domain_scores is None else \
            [None if v is None else _score(v) for v in domain_scores]
        added = [added] * len(ids) if isinstance(added, dt.datetime) else list(added)
        vectors = np.ascontiguousarray(embeddings, "<f4")
        if self.originals_store is not None:  # before the commit: an unreachable store refuses
            for o in originals:
                self.originals_store.put(o.sha256, o.data)
        conn.execute(insert(IMAGES), [
            {"sha256": o.sha256, "media_type": o.media_type,
             "data": None if self.originals_store is not None else o.data} for o in originals])
        conn.execute(insert(ITEMS), [
            {"id": i, "label": label, "source": o.name, "sha256": o.sha256, "width": o.size[0],
             "height": o.size[1], "added": when, "metadata": meta, "embedding": v.tobytes(),
             "domain_score": score}
            for i, o, label, meta, v, when, score in zip(ids, originals, labels, metadata, vectors,
                                                        added, scores)])
        return ids

    def set_domain_scores(self, conn: Connection, scores: dict[int, float]) -> None:
        """Record the domain scores of items checked after they were added."""
        if scores:
            conn.execute(update(ITEMS).where(ITEMS.c.id == bindparam("item")).values(
                domain_score=bindparam("score")),
                [{"item": int(i), "score": _score(v)} for i, v in scores.items()])

    def unchecked(self, conn: Connection) -> np.ndarray:
        """The ids of items whose image was never domain-checked, ascending."""
        return np.array(conn.execute(select(ITEMS.c.id).where(ITEMS.c.domain_score.is_(None))
                                     .order_by(ITEMS.c.id)).scalars().all(), np.int64)

    def domain_scores(self, conn: Connection, ids: Sequence[int]) -> dict[int, Optional[float]]:
        found: dict[int, Optional[float]] = {}
        for chunk in _chunks(_ints(ids)):
            rows = conn.execute(select(ITEMS.c.id, ITEMS.c.domain_score)
                                .where(ITEMS.c.id.in_(chunk)))
            found.update({int(i): v for i, v in rows})
        return found

    def missing(self, conn: Connection, ids: Sequence[int]) -> list[int]:
        """Those of `ids` that are not in the gallery."""
        present: set[int] = set()
        ids = _ints(ids)
        for chunk in _chunks(ids):
            present.update(conn.execute(select(ITEMS.c.id).where(ITEMS.c.id.in_(chunk))).scalars())
        return [i for i in ids if i not in present]

    def edit(self, conn: Connection, item_id: int, **values: Any) -> None:
        """Change an item's `label` and/or `metadata`."""
        columns = {"label": ITEMS.c.label, "metadata": ITEMS.c.metadata}
        conn.execute(update(ITEMS).where(ITEMS.c.id == int(item_id)).values(
            {columns[name]: value for name, value in values.items()}))

    def delete(self, conn: Connection, ids: Sequence[int]) -> list[str]:
        """Delete items and their images; the hashes of the images, for `discard` after the
        commit when the bytes are in an originals store."""
        removed = []
        for chunk in _chunks(_ints(ids)):
            hashes = list(conn.execute(select(ITEMS.c.sha256).where(ITEMS.c.id.in_(chunk))).scalars())
            conn.execute(delete(ITEMS).where(ITEMS.c.id.in_(chunk)))
            conn.execute(delete(IMAGES).where(IMAGES.c.sha256.in_(hashes)))
            removed.extend(hashes)
        return removed

    def discard(self, hashes: list[str]) -> None:
        """After a delete has committed: remove the objects from the originals store, if any."""
        discard(self.originals_store, hashes)

    def _bytes(self, sha256: str, data: Optional[bytes]) -> bytes:
        if data is not None:
            return bytes(data)
        if self.originals_store is None:
            raise GalleryError(f"the image {sha256} has no bytes in the database and the gallery "
                               "names no originals store")
        return self.originals_store.get(sha256)

    def quick_check(self, max_bytes: int = 2 * 1024**3) -> Optional[str]:
        """What SQLite's `quick_check` finds wrong with the database (its first line), or None:
        it reads every page (2 ms for the demo's 3.9 MB database from the page cache, 41 ms
        cold), so a database over `max_bytes` is left to `siamese-gallery check`. Other
        databases check themselves."""
        if self.engine.dialect.name != "sqlite":
            return None
        file = Path(self.engine.url.database or "")
        if not file.is_file() or file.stat().st_size > max_bytes:
            return None
        try:
            with self.engine.connect() as conn:
                rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(5)").fetchall()]
        except DBAPIError as exc:  # damage that stops the check itself
            return str(exc.orig).splitlines()[0]
        return None if rows == ["ok"] else "; ".join(rows)

    def purge(self) -> None:
        """After a delete: leave no copy of the deleted rows in the database's files. On SQLite,
        `secure_delete` has zeroed them in the database pages, and a checkpoint that truncates the
        write-ahead log drops the older copies kept there (when a reader still holds an older
        snapshot the log is truncated at a later checkpoint instead). PostgreSQL keeps dead rows
        until VACUUM reclaims them (autovacuum, or VACUUM after deletes that must not linger)."""
        if self.engine.dialect.name == "sqlite" and not self.read_only:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def items(self, conn: Connection, ids: Sequence[int]) -> dict[int, Item]:
        found: dict[int, Item] = {}
        for chunk in _chunks(_ints(ids)):
            rows = conn.execute(select(*_ITEM_COLUMNS).join(IMAGES).where(ITEMS.c.id.in_(chunk)))
            found.update({int(r.id): self._item(r) for r in rows})
        return found

    def list_items(self, conn: Connection, offset: int, limit: int,
                   label: Optional[str] = None) -> list[Item]:
        query = select(*_ITEM_COLUMNS).join(IMAGES).order_by(ITEMS.c.id).offset(offset).limit(limit)
        if label is not None:
            query = query.where(ITEMS.c.label == label)
        return [self._item(r) for r in conn.execute(query)]

    @staticmethod
    def _item(r) -> Item:
        return Item(id=int(r.id), label=r.label, source=r.source, sha256=r.sha256, width=r.width,
                    height=r.height, media_type=r.media_type, added=_utc(r.added),
                    metadata=r.metadata or {}, domain_score=r.domain_score)

    def image(self, conn: Connection, item_id: int) -> tuple[bytes, str]:
        row = conn.execute(select(IMAGES.c.sha256, IMAGES.c.data, IMAGES.c.media_type).join(ITEMS)
                           .where(ITEMS.c.id == item_id)).first()
        if row is None:
            raise NotFoundError(f"no item {item_id} in the gallery")
        return self._bytes(row.sha256, row.data), row.media_type

    def count(self, conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(ITEMS)).scalar_one())

    def label_counts(self, conn: Connection) -> dict[Optional[str], int]:
        rows = conn.execute(select(ITEMS.c.label, func.count()).group_by(ITEMS.c.label)
                            .order_by(ITEMS.c.label))
        return {label: int(n) for label, n in rows}

    def labels(self, conn: Connection, ids: Sequence[int]) -> dict[int, Optional[str]]:
        found: dict[int, Optional[str]] = {}
        for chunk in _chunks(_ints(ids)):
            found.update({int(i): label for i, label in conn.execute(
                select(ITEMS.c.id, ITEMS.c.label).where(ITEMS.c.id.in_(chunk)))})
        return found

    def ids(self, conn: Connection) -> np.ndarray:
        return np.fromiter(conn.execute(select(ITEMS.c.id).order_by(ITEMS.c.id)).scalars(), np.int64)

    def embeddings(self, conn: Connection, dim: int, ids: Optional[Sequence[int]] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 (N, dim)) of the given items, or of all items in id order."""
        query = select(ITEMS.c.id, ITEMS.c.embedding).order_by(ITEMS.c.id)
        if ids is None:
            rows = conn.execute(query).all()
        else:
            rows = [r for chunk in _chunks(_ints(ids))
                    for r in conn.execute(query.where(ITEMS.c.id.in_(chunk)))]
        blobs = [bytes(r.embedding) for r in rows]
        bad = [int(r.id) for r, b in zip(rows, blobs) if len(b) != 4 * dim]
        if bad:
            raise GalleryError(f"item {bad[0]} has a damaged embedding ({len(bad)} item(s) in all); "
                               "re-embed the gallery with siamese-index --reembed")
        vectors = np.frombuffer(b"".join(blobs), "<f4").reshape(len(rows), dim).astype(np.float32)
        return np.array([int(r.id) for r in rows], np.int64), vectors

    def originals(self, conn: Connection, after_id: int, limit: int
                  ) -> list[tuple[int, str, bytes]]:
        """(id, source, image bytes) of the next `limit` items with id > `after_id`."""
        rows = conn.execute(select(ITEMS.c.id, ITEMS.c.source, IMAGES.c.sha256, IMAGES.c.data)
                            .join(IMAGES).where(ITEMS.c.id > after_id).order_by(ITEMS.c.id)
                            .limit(limit))
        return [(int(r.id), r.source, self._bytes(r.sha256, r.data)) for r in rows]

    def set_embeddings(self, conn: Connection, ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, "<f4")
        conn.execute(update(ITEMS).where(ITEMS.c.id == bindparam("item_id"))
                     .values(embedding=bindparam("vector")),
                     [{"item_id": int(i), "vector": v.tobytes()} for i, v in zip(ids, vectors)])
