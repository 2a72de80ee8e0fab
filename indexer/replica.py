"""The gallery's FAISS index, kept in line with its database.

The database is the record. Each change is one transaction (rows, embeddings, image bytes and a
row of the change log together) that bumps a generation counter; the index in memory is updated
after it. `sync` brings it to the database's current generation by replaying the change log since
the generation it reflects: work in proportion to what changed, whoever changed it (another
worker, another `siamese-index`, another server on the same PostgreSQL database).

The index file is a snapshot: written (atomically) only when one is due (`snapshot_due`: a share
of the index changed since the last one, or a while has passed with changes unsaved), and at
close; opening loads it and replays the log after its generation. When the file cannot be used (a
crash, a kill, a deleted or damaged file) the index is rebuilt from the stored embeddings; when the
log no longer reaches back to the snapshot (compacted), all ids are compared instead.

A `Replica` is not thread-safe: the gallery calls it under its mutex, and saves only while it
holds the writer lock (or can take it without waiting).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from sqlalchemy.exc import DBAPIError

from .files import remove_leftovers
from .lock import WriterLock
from .store import Change, GalleryRecord, Store
from .vectors import IndexSpec, VectorIndex, saved_generation

log = logging.getLogger(__name__)

# When a snapshot (the whole index file) is due; measured in docs/deployment.md.
SNAPSHOT_SHARE = 0.1  # ... once this share of the index has changed (items added or removed) ...
SNAPSHOT_MIN_CHANGES = 1_000  # ... and at least this many items ...
SNAPSHOT_SECONDS = 600.0  # ... or once changes have waited this long (bounds replay after a kill)
REMOVAL_SECONDS = 60.0  # ... or once a removal has: a deleted vector leaves the file by then
LOG_KEEP = 10_000  # changes kept in the log before the newest snapshot (for other servers' files)


class Replica:
    """The in-memory index of the gallery at `path`, the database generation it reflects, and
    how far the index file on disk lags behind it."""

    def __init__(self, path: Path, store: Store, lock: WriterLock, record: GalleryRecord,
                 check: Callable[[GalleryRecord], None], stale_limit: int):
        self.path, self.store, self.lock = path, store, lock
        self.record = record  # the gallery's row as last read (or written) by this process
        self.check = check  # refuses a record this process cannot serve (another model)
        self.index: Optional[VectorIndex] = None
        self.model_id: Optional[str] = None  # the model id the in-memory index was built for
        self.generation = -1  # the database generation the in-memory index reflects
        self.saved_generation = -1  # the generation of the index file, as this process knows it
        self.changed_items = 0  # items added or removed in memory since that file
        self.unsaved_since: Optional[float] = None  # when the first change since it was applied
        self.removal_since: Optional[float] = None  # ... and the first removal
        # Ids whose items changed in the database, by the changes synced since the gallery last
        # took them (`take_stale`); None: any item may have (the index was reloaded or rebuilt),
        # or more than `stale_limit` did (a big import seen by a worker that does not search:
        # its item cache is cleared whole instead of the set growing with every id).
        self.stale: Optional[set[int]] = set()
        self.stale_limit = stale_limit

    @property
    def unsaved(self) -> bool:
        return self.index is not None and self.generation != self.saved_generation

    def snapshot_due(self) -> bool:
        if not self.unsaved:
            return False
        now = time.monotonic()
        return (self.changed_items >= max(SNAPSHOT_MIN_CHANGES, SNAPSHOT_SHARE * len(self.index))
                or now - (self.unsaved_since or now) >= SNAPSHOT_SECONDS
                or now - (self.removal_since or now) >= REMOVAL_SECONDS)

    def _note(self, added: int, removed: int) -> None:
        """Count what changed in memory since the index file."""
        now = time.monotonic()
        self.changed_items += added + removed
        if added + removed and self.unsaved_since is None:
            self.unsaved_since = now
        if removed and self.removal_since is None:
            self.removal_since = now

    def start_empty(self) -> None:
        """A new gallery's index: empty, saved (writer lock held)."""
        spec, dim = IndexSpec.parse(self.record.index), self.record.embedding_dim
        self.index = VectorIndex.build(spec, dim, np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
        self.model_id, self.generation = self.record.model_id, self.record.generation
        self.save()

    def take_stale(self) -> Optional[set[int]]:
        """The ids whose items changed since the last call (None: any may have), forgotten."""
        stale, self.stale = self.stale, set()
        return stale

    def changed(self, generation: int, update: Callable[[VectorIndex], None],
                added: int = 0, removed: int = 0) -> None:
        """After a committed change that `added` or `removed` items: apply it to the in-memory
        index (writer lock held)."""
        if generation != self.generation + 1:
            self.sync()  # another process wrote in between; the log has theirs and ours
            return
        update(self.index)
        self.generation = generation
        self._note(added, removed)
        self._rebuild_if_wanted()

    def sync(self) -> None:
        """Bring the in-memory index to the database's current state."""
        if self.generation >= 0 and self.store.current_generation() == self.generation:
            return  # the common case, once per request: nothing changed
        repaired = False
        with self.store.read() as conn:
            if self.store.generation(conn) == self.generation:
                return
            record = self.store.record(conn)
            self.check(record)
            self.record = record
            spec = IndexSpec.parse(record.index)
            fits = (self.index is not None and self.index.spec == spec
                    and self.model_id == record.model_id)
            if not (fits and self._replay(conn, self.generation, record.generation)):
                self.stale = None
                repaired = self._reload(conn, record, fits)
            self.model_id, self.generation = record.model_id, record.generation
        if repaired and not self.lock.held:
            self.flush(adopt=False)  # a reader that repaired the index saves it, if no writer is busy

    def _reload(self, conn, record: GalleryRecord, fits: bool) -> bool:
        """Catch up from the index file (or the index in memory, if newer), else rebuild; whether
        the index file needs saving because of what was found."""
        spec = IndexSpec.parse(record.index)
        expect = {"gallery_id": record.gallery_id, "model_id": record.model_id,
                  "spec": str(spec), "dim": record.embedding_dim}
        loaded, manifest, why = VectorIndex.load(self.path, expect)
        if loaded is not None and (not fits or manifest["generation"] > self.generation):
            self.index, base = loaded, int(manifest["generation"])
            self.saved_generation, self.changed_items = base, 0
            self.unsaved_since = self.removal_since = None
        elif fits:
            base = self.generation
        else:
            if self.index is None and why:
                log.warning("%s: rebuilding the index from the stored embeddings: %s",
                            self.path, why)
            self.index = self._build(conn)
            self._note(len(self.index), 0)
            return True
        if self._replay(conn, base, record.generation):
            return False
        self._compare_ids(conn, base, record.generation)
        return True

    def _replay(self, conn, after: int, upto: int) -> bool:
        """Apply the logged changes after generation `after`; False (nothing applied) when the
        log does not hold all of them."""
        changes = self.store.changes(conn, after, upto)
        if changes is None:
            return False
        if self.stale is not None:
            if any(c.op == "record" for c in changes):
                self.stale = None
            else:
                for change in changes:
                    self.stale.update(change.ids.tolist())
                if len(self.stale) > self.stale_limit:
                    self.stale = None
        added, removed = _net(changes)
        self.index.remove(removed)
        if len(added):
            ids, vectors = self.store.embeddings(conn, self.record.embedding_dim, added)
            self.index.add(ids, vectors)
        self._note(len(added), len(removed))
        if changes:
            log.debug("%s: index replayed generations %d..%d: %d added, %d removed",
                      self.path, after + 1, upto, len(added), len(removed))
        self._rebuild_if_wanted(conn)
        return True

    def _compare_ids(self, conn, from_generation: int, to_generation: int) -> None:
        """The catch-up when the log is not there to replay: every id, compared."""
        stored = self.store.ids(conn)
        indexed = self.index.ids()
        extra = np.setdiff1d(indexed, stored)
        missing = np.setdiff1d(stored, indexed)
        self.index.remove(extra)
        if len(missing):
            ids, vectors = self.store.embeddings(conn, self.record.embedding_dim,
                                                 None if len(missing) == len(stored) else missing)
            self.index.add(ids, vectors)
        self._note(len(missing), len(extra))
        log.info("%s: index caught up from generation %d to %d by comparing ids: %d added, "
                 "%d removed", self.path, from_generation, to_generation, len(missing), len(extra))
        self._rebuild_if_wanted(conn)

    def _rebuild_if_wanted(self, conn=None) -> None:
        reason = self.index.wants_rebuild()
        if not reason:
            return
        log.info("%s: rebuilding the index: %s", self.path, reason)
        if conn is None:
            with self.store.read() as conn:
                self.index = self._build(conn)
        else:
            self.index = self._build(conn)
        self._note(len(self.index), 0)  # a new index: its snapshot is due

    def _build(self, conn) -> VectorIndex:
        ids, vectors = self.store.embeddings(conn, self.record.embedding_dim)
        return VectorIndex.build(IndexSpec.parse(self.record.index), self.record.embedding_dim,
                                 ids, vectors)

    def save(self) -> None:
        """Write the index file and manifest (writer lock held), then drop the log's changes
        older than `LOG_KEEP` before it. A file system that refuses (disk full, read-only)
        leaves the old files, which the log catches up later: every change is already committed
        in the database, so it is logged, not raised."""
        self.index.update_recall()
        try:
            remove_leftovers(self.path)
            self.index.save(self.path, {"gallery_id": self.record.gallery_id,
                                        "model_id": self.record.model_id,
                                        "generation": self.generation})
        except OSError as exc:
            log.warning("%s: the index file could not be saved (%s); the database holds every "
                        "change, and the index catches up from it at the next save or open",
                        self.path, exc.strerror or exc)
            return
        self._saved()
        if self.generation > LOG_KEEP:
            try:
                with self.store.write() as conn:
                    self.store.compact_log(conn, self.generation - LOG_KEEP)
            except DBAPIError as exc:  # the next snapshot compacts it
                log.warning("%s: the change log could not be compacted (%s)", self.path,
                            str(exc.orig or exc).splitlines()[0])

    def _saved(self) -> None:
        self.saved_generation, self.changed_items = self.generation, 0
        self.unsaved_since = self.removal_since = None

    def flush(self, adopt: bool = True) -> None:
        """Save the index file now if it has unsaved changes, unless another process is writing
        or has written since (its index file is the newer one; the database is the record).
        `adopt`: take a file whose manifest already names this generation (another worker of
        this folder saved it) as saved, instead of writing it again."""
        if self.unsaved and self.lock.acquire(blocking=False):
            try:
                if adopt and saved_generation(self.path) == self.generation:
                    self._saved()  # another worker of this folder saved this very state
                elif self.store.generation() == self.generation:
                    self.save()
            finally:
                self.lock.release()


def _net(changes: list[Change]) -> tuple[np.ndarray, np.ndarray]:
    """(ids to add, ids to remove) that a run of changes comes to: ids are never reused, so an
    item both added and removed within the run is neither."""
    added: set[int] = set()
    removed: set[int] = set()
    for change in changes:
        if change.op == "add":
            added.update(change.ids.tolist())
        elif change.op == "remove":
            for i in change.ids.tolist():
                if i in added:
                    added.discard(i)
                else:
                    removed.add(i)
    return (np.array(sorted(added), np.int64), np.array(sorted(removed), np.int64))
