"""The gallery's FAISS index, kept in line with its database.

The database is the record. Each change is one transaction (rows, embeddings and image bytes
together) that bumps a generation counter; the index is updated after it and saved with the
generation it reflects. Whatever happens between the two (a crash, a kill, a deleted or damaged
index file), `sync` brings the index back in line with the database: it loads the index file if
it is intact, then adds the vectors of items it lacks and drops those it has too many, or
rebuilds it from the stored embeddings when the file cannot be used.

A `Replica` is not thread-safe: the gallery calls it under its mutex, and saves only while it
holds the writer lock (or can take it without waiting).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .files import remove_leftovers
from .lock import WriterLock
from .store import GalleryRecord, Store
from .vectors import IndexSpec, VectorIndex

log = logging.getLogger(__name__)


class Replica:
    """The in-memory index of the gallery at `path`, the database generation it reflects, and
    whether the index file on disk lags behind it."""

    def __init__(self, path: Path, store: Store, lock: WriterLock, record: GalleryRecord,
                 check: Callable[[GalleryRecord], None]):
        self.path, self.store, self.lock = path, store, lock
        self.record = record  # the gallery's row as last read (or written) by this process
        self.check = check  # refuses a record this process cannot serve (another model)
        self.index: Optional[VectorIndex] = None
        self.model_id: Optional[str] = None  # the model id the in-memory index was built for
        self.generation = -1  # the database generation the in-memory index reflects
        self.unsaved = False
        self.last_save = time.monotonic()

    def start_empty(self) -> None:
        """A new gallery's index: empty, saved (writer lock held)."""
        spec, dim = IndexSpec.parse(self.record.index), self.record.embedding_dim
        self.index = VectorIndex.build(spec, dim, np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
        self.model_id, self.generation = self.record.model_id, self.record.generation
        self.save()

    def changed(self, generation: int, update: Callable[[VectorIndex], None]) -> None:
        """After a committed change: apply it to the in-memory index (writer lock held)."""
        if generation != self.generation + 1:
            self.sync()  # someone wrote without our lock; catch up from the database instead
            return
        update(self.index)
        self.generation = generation
        self.unsaved = True
        reason = self.index.wants_rebuild()
        if reason:
            log.info("%s: rebuilding the index: %s", self.path, reason)
            with self.store.read() as conn:
                self.index = self._build(conn)

    def sync(self) -> None:
        """Bring the in-memory index to the database's current state."""
        if self.generation >= 0 and self.store.current_generation() == self.generation:
            return  # the common case, once per request: nothing changed
        with self.store.read() as conn:
            if self.store.generation(conn) == self.generation:
                return
            record = self.store.record(conn)
            self.check(record)
            self.record = record
            base, base_generation, loaded, why = self._base(record)
            if base is None:
                if self.index is None and why:
                    log.warning("%s: rebuilding the index from the stored embeddings: %s",
                                self.path, why)
                self.index = self._build(conn)
            else:
                self.index = base
                if base_generation != record.generation:
                    self._catch_up(conn, base_generation, record.generation)
            self.model_id, self.generation = record.model_id, record.generation
            self.unsaved = base is not loaded or base_generation != record.generation
        if not self.lock.held:
            self.flush()  # a reader that repaired the index saves it, if no writer is busy

    def _base(self, record: GalleryRecord
              ) -> tuple[Optional[VectorIndex], int, Optional[VectorIndex], Optional[str]]:
        """The index to catch up from: the file's when it is newer than the one in memory (or
        there is none that fits), else the one in memory; with its generation, the file's index
        (if it could be loaded) and why it could not."""
        spec = IndexSpec.parse(record.index)
        expect = {"gallery_id": record.gallery_id, "model_id": record.model_id,
                  "spec": str(spec), "dim": record.embedding_dim}
        loaded, manifest, why = VectorIndex.load(self.path, expect)
        current = self.index if (self.index is not None and self.index.spec == spec
                                 and self.model_id == record.model_id) else None
        if loaded is not None and (current is None or manifest["generation"] > self.generation):
            return loaded, int(manifest["generation"]), loaded, why
        if current is not None:
            return current, self.generation, loaded, why
        return None, -1, loaded, why

    def _build(self, conn) -> VectorIndex:
        ids, vectors = self.store.embeddings(conn, self.record.embedding_dim)
        return VectorIndex.build(IndexSpec.parse(self.record.index), self.record.embedding_dim,
                                 ids, vectors)

    def _catch_up(self, conn, from_generation: int, to_generation: int) -> None:
        stored = self.store.ids(conn)
        indexed = self.index.ids()
        extra = np.setdiff1d(indexed, stored)
        missing = np.setdiff1d(stored, indexed)
        self.index.remove(extra)
        if len(missing):
            ids, vectors = self.store.embeddings(conn, self.record.embedding_dim,
                                                 None if len(missing) == len(stored) else missing)
            self.index.add(ids, vectors)
        log.info("%s: index caught up from generation %d to %d: %d added, %d removed",
                 self.path, from_generation, to_generation, len(missing), len(extra))
        if self.index.wants_rebuild():
            self.index = self._build(conn)

    def save(self) -> None:
        """Write the index file and manifest (writer lock held). A file system that refuses (disk
        full, read-only) leaves the old files, which the database catches up later: every change
        is already committed there, so it is logged, not raised."""
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
        self.unsaved = False
        self.last_save = time.monotonic()

    def flush(self) -> None:
        """Save the index file now if it has unsaved changes, unless another process is writing
        or has written since (its index file is the newer one; the database is the record)."""
        if self.unsaved and self.lock.acquire(blocking=False):
            try:
                if self.store.generation() == self.generation:
                    self.save()
            finally:
                self.lock.release()
