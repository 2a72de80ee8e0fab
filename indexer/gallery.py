"""`Gallery`: the reference images that queries are matched against.

A gallery is a folder (`folder.py` says what is in it) with a metadata database (`store.py`),
the record, and a FAISS index (`vectors.py`) that `replica.py` keeps in line with it. One process
writes at a time (the folder's lock); any number read, each catching up with the others' changes
by the database's generation counter.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from encoder.distance import euclidean
from encoder.errors import ConfigError, NotFoundError
from encoder.images import ImageSource
from encoder.verdict import (DEFAULT_FPIR, DomainCheck, Rule, Verdicts, check_fpir,
                             nearest_impostors)

from . import folder
from .errors import GalleryError
from .folder import LOCK_FILE
from .lock import WriterLock
from .originals import normalise as normalise_originals
from .records import MAX_LABEL_LENGTH, Item, Match, Original, check_metadata, check_text
from .replica import Replica
from .store import SCHEMA_VERSION, GalleryRecord, Store
from .vectors import INDEX_FILE, IndexSpec, VectorIndex

UNCHANGED: Any = object()  # `Gallery.edit`: a field not given
log = logging.getLogger(__name__)

# A search asks the index for this many more than k: an item removed by another process (or
# thread) since this one's last refresh is still in its index but no longer in the database, and
# is dropped; the spares keep the answer at k (seen under 10% writes: 9 of 10 matches).
STALE_SPARE = 4
ITEM_CACHE = 50_000  # items kept in memory for search results (a few hundred bytes each)
IMPOSTOR_SAMPLE = 5_000  # items whose nearest other-label item sets the 1:N threshold

Images = Union[ImageSource, Sequence[ImageSource]]


# Said where such an image is added (API, pages): it is kept, but is no use for verifying.
FEATURELESS_WARNING = ("the model finds no features in this image, so no other image will be "
                       "verified against this item")

# The check that decides a match with a gallery item whose image the model finds no features in.
FEATURELESS_ITEM = DomainCheck.no_features(whose="the gallery item: ")
# ... and of an item added before enrolment checked images.
UNCHECKED_ITEM = DomainCheck(None, None, "the gallery item: its image was not checked when it "
                             "was added (siamese-gallery check --record checks it)")
OUT_OF_DOMAIN_WARNING = ("the image does not look like what the model was trained on, so no "
                         "other image will be verified against this item")


@dataclass(frozen=True)
class Added:
    """What `add_originals` did: each image's id, in order, whether it was added now (False:
    the same bytes were already in the gallery, or earlier in the same batch), whether the
    model finds no features in it (`Embedder.is_featureless`) and the domain check of its image
    (`checks`): nothing else will be verified against an item that is featureless or out of
    domain."""
    ids: list[int]
    created: list[bool]
    featureless: list[bool]
    checks: list[DomainCheck] = field(default_factory=list)

    @property
    def out_of_domain(self) -> list[bool]:
        return [c.in_domain is False and not c.featureless for c in self.checks]


@dataclass(frozen=True)
class SearchResult:
    """One query's matches, the rule they were judged by and the query's domain check."""

    matches: list[Match]
    rule: Rule
    domain: DomainCheck

    @property
    def top(self) -> Optional[Match]:
        """The nearest match that can be judged, which the answer is about: an item the model
        finds no features in never can be."""
        return _judgeable(self.matches)


@dataclass(frozen=True)
class Identification:
    """The outcome of 1:N identification: the identified item (or None), the nearest item with
    its verdict (the nearest that can be judged: `SearchResult.top`), the rule used and the
    query's domain check."""

    match: Optional[Match]
    nearest: Optional[Match]
    rule: Rule
    domain: DomainCheck


@dataclass(frozen=True)
class GalleryStats:
    path: str
    database: str
    items: int
    labels: dict[str, int]
    model_id: str
    embedding_dim: int
    threshold: float  # of the gallery's default 1:1 rule
    operating_point: str  # of that rule: a card's operating point, or "threshold" (given)
    fpir: float  # the default target false-positive identification rate of `identify`
    index: str  # the index as it runs, e.g. "hnsw:m=16,ef_construction=80,ef_search=64"
    vectors: int  # vectors in the index, deleted ones (hnsw tombstones) included
    recall_at_10: Optional[float]  # measured against exact search when the index was built
    recall_measured_on: Optional[int]  # items in the index at that time
    index_bytes: Optional[int]
    generation: int
    created: str
    originals: str  # where the original images are: "database", a folder or a URL

    def summary(self) -> str:
        """One line for people: size, model, index, verdict defaults."""
        recall = f", recall@10 {self.recall_at_10:.3f}" if self.recall_at_10 is not None else ""
        return (f"gallery {self.path}: {self.items:,} items, {len(self.labels)} label(s), "
                f"model {self.model_id}, index {self.index}{recall}; verdicts at "
                f"{self.operating_point} (threshold {self.threshold:.4f}), identification at "
                f"FPIR {self.fpir:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Gallery:
    """Images, their embeddings and metadata, searchable by image. Make one with `create` or `open`.

    One process writes at a time (`gallery.lock`); any number read. Within a process a Gallery is
    safe to share between threads. Another process's changes become visible after `refresh()`.
    """

    def __init__(self, path: Path, embedder, store: Store, record: GalleryRecord,
                 lock_timeout: float = 30.0):
        self.path = path
        self.embedder = embedder
        self._store = store
        self._lock = WriterLock(path / LOCK_FILE, lock_timeout)
        self._mutex = threading.RLock()
        self._replica = Replica(path, store, self._lock, record, self._check_model,
                                stale_limit=ITEM_CACHE)
        # Search results' items, by id, least recently used first. A cached item is right until
        # it is edited or removed: this process's own changes drop it at once, another's when
        # the replica has synced them (`_cached_items`); ids are never reused.
        self._item_cache: OrderedDict[int, Item] = OrderedDict()
        self._item_check = lru_cache(maxsize=ITEM_CACHE)(self._score_check)
        # (gallery size, nearest impostor distances, identities): `_impostor_basis`
        self._impostors: Optional[tuple[int, np.ndarray, int]] = None

    # --- making and opening ----------------------------------------------------------------------

    @classmethod
    def create(cls, path: Union[str, Path], embedder, index: Union[str, IndexSpec] = "flat",
               url: Optional[str] = None, threshold: Optional[float] = None,
               lock_timeout: float = 30.0, operating_point: Optional[str] = None,
               fpir: Optional[float] = None, originals: Optional[str] = None,
               exist_ok: bool = False) -> "Gallery":
        """A new, empty gallery in folder `path` (created; it must not hold anything yet; with
        `exist_ok`, a gallery already there is opened instead, its settings as they are, so a
        script can be run again).

        `index`: an `IndexSpec` or its text ("flat", "hnsw:m=16", ...). `url`: keep the metadata at
        this SQLAlchemy URL instead of `path/gallery.db` (then pass it to `open` too: it is not
        written down, as it may hold a password). `operating_point` ("balanced", "far-1e-2",
        "far-1e-3") or `threshold`: this gallery's default 1:1 rule (default: "balanced");
        `fpir`: its default target for `identify` (0.01). `lock_timeout`: seconds to wait for
        another writer. `originals`: keep the original image bytes outside the database, in this
        folder or at this fsspec URL (e.g. s3://bucket/prefix), content-addressed; the database
        keeps the key (`indexer.originals`)."""
        path = Path(path)
        if exist_ok and (path / folder.GALLERY_FILE).is_file():
            return cls.open(path, embedder, url=url, lock_timeout=lock_timeout)
        spec = index if isinstance(index, IndexSpec) else IndexSpec.parse(index)
        originals = normalise_originals(originals)
        # The verdict checks both (and not both together), before anything is made.
        rule = embedder.verdicts.rule(operating_point, threshold)
        threshold = None if threshold is None else rule.threshold
        fpir = None if fpir is None else check_fpir(fpir)
        record = GalleryRecord(gallery_id=folder.new_gallery_id(), schema=SCHEMA_VERSION,
                               model_id=embedder.model_id, embedding_dim=embedder.embedding_dim,
                               index=str(spec), threshold=threshold, generation=0, next_id=1,
                               created=dt.datetime.now(dt.timezone.utc),
                               operating_point=operating_point, fpir=fpir, originals=originals)
        store = folder.make(path, url, record, embedder.directory)
        gallery = cls(path, embedder, store, record, lock_timeout)
        with gallery._lock, gallery._mutex:
            gallery._replica.start_empty()
        return gallery

    @classmethod
    def open(cls, path: Union[str, Path], embedder, url: Optional[str] = None,
             lock_timeout: float = 30.0) -> "Gallery":
        """An existing gallery, checked: the model must be the one it was built with, and the index
        is brought in line with the database (rebuilt from stored embeddings if need be).
        Options as for `create`."""
        path = Path(path)
        store, record = folder.connect(path, url)
        damage = store.quick_check()
        if damage:
            store.close()
            raise GalleryError(f"{path}: its database is damaged ({damage}); see what with "
                               f"siamese-gallery check {path}, and restore it from an export "
                               "(siamese-gallery import)")
        gallery = cls(path, embedder, store, record, lock_timeout)
        gallery._check_model(record)
        gallery.refresh()
        return gallery

    @classmethod
    def reembed(cls, path: Union[str, Path], embedder, url: Optional[str] = None,
                batch_size: int = 512, progress=None, lock_timeout: float = 30.0) -> "Gallery":
        """Re-embed every stored image with `embedder` (a new model), in one transaction, then
        rebuild the index; returns the gallery, open. Interrupted, it leaves the gallery as it
        was. `progress`: an object with `update(n)` (e.g. tqdm)."""
        path = Path(path)
        store, record = folder.connect(path, url)
        gallery = cls(path, embedder, store, record, lock_timeout)
        with gallery._lock, gallery._mutex:
            if record.model_id == embedder.model_id:
                log.info("%s: already embedded with model %s", path, embedder.model_id)
            else:
                with store.write() as conn:
                    after = 0
                    while batch := store.originals(conn, after, batch_size):
                        vectors = embedder.embed([data for _, _, data in batch])
                        store.set_embeddings(conn, [i for i, _, _ in batch], vectors)
                        after = batch[-1][0]
                        if progress is not None:
                            progress.update(len(batch))
                    generation, _ = store.next_generation(conn)
                    store.update_record(conn, model_id=embedder.model_id,
                                        embedding_dim=embedder.embedding_dim)
                    store.log(conn, generation, "record")
            gallery._replica.sync()  # the manifest names the old model: a full rebuild
            if gallery._replica.unsaved:
                gallery._replica.save()
            folder.remember_model(path, embedder.directory)
        return gallery

    @property
    def record(self) -> GalleryRecord:
        """The gallery's settings as stored: its id, model, index, verdict and generation."""
        return self._replica.record

    @property
    def _index(self) -> VectorIndex:
        return self._replica.index

    def close(self) -> None:
        """Save the index if it has unsaved changes, and let go of the database."""
        with self._mutex:
            self.flush()
            self._store.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._mutex:
            return len(self._index)

    @property
    def model_id(self) -> str:
        return self.record.model_id

    @property
    def threshold(self) -> float:
        """The threshold of this gallery's default 1:1 rule (`rule()`)."""
        return self.rule().threshold

    @property
    def fpir(self) -> float:
        """The default target false-positive identification rate of `identify`."""
        return DEFAULT_FPIR if self.record.fpir is None else self.record.fpir

    def rule(self, operating_point: Optional[str] = None, threshold: Optional[float] = None
             ) -> Rule:
        """The 1:1 rule for a request: its operating point or threshold, else the gallery's
        default (set at creation or with `set_verdict`), else "balanced"."""
        s = self.record
        default = s.threshold if s.threshold is not None else s.operating_point
        return self.embedder.verdicts.rule(operating_point, threshold, default)

    def identification_rule(self, fpir: Optional[float] = None,
                            threshold: Optional[float] = None) -> Rule:
        """The 1:N rule at the gallery's current size: the threshold for the target `fpir`
        (default: the gallery's), or an explicit `threshold`; from the gallery's own items when
        there are enough of them (`encoder.verdict.Verdicts.identification_rule`)."""
        impostors, identities = (None, None) if threshold is not None else self._impostor_basis()
        return self.embedder.verdicts.identification_rule(len(self), fpir, threshold, self.fpir,
                                                          impostors, identities)

    def nearest_impostors(self) -> np.ndarray:
        """For (a sample of up to `IMPOSTOR_SAMPLE`) items, the distance to the nearest item of
        another label: what the 1:N threshold is read from. Kept until the gallery's size moves
        by more than 1%, so a busy gallery does not recompute it for every change."""
        return self._impostor_basis()[0]

    def _impostor_basis(self) -> tuple[np.ndarray, int]:
        """`nearest_impostors`, and the number of identities enrolled (labels, each unlabelled
        item its own), kept together."""
        with self._mutex:
            size = len(self._index)
            cached = self._impostors
            if cached is not None and abs(cached[0] - size) <= 0.01 * size:
                return cached[1], cached[2]
            with self._store.read() as conn:
                counts = self._store.label_counts(conn)
            # The people or things enrolled: one per label, and every unlabelled item its own.
            identities = len([k for k in counts if k is not None]) + counts.get(None, 0)
            ids = self._index.ids()
            if len(ids) > IMPOSTOR_SAMPLE:
                ids = np.sort(np.random.default_rng(size).choice(ids, IMPOSTOR_SAMPLE,
                                                                 replace=False))
            with self._store.read() as conn:
                ids, vectors = self._store.embeddings(conn, self.record.embedding_dim, ids)
                labels = self._store.labels(conn, ids)
                scores = self._store.domain_scores(conn, ids)
            # An item the model finds no features in, or out of its domain, is never matched, so
            # it is nobody's impostor: counted, a few featureless ones (at distance 0 from each
            # other) would pull a strict FPIR's threshold to nothing.
            judged = ~self.embedder.is_featureless(vectors) & ~self._out_of_domain(ids, scores)
            ids, vectors = ids[judged], vectors[judged]
            if size <= IMPOSTOR_SAMPLE:
                impostors = nearest_impostors(vectors, [labels[int(i)] for i in ids])
            else:
                impostors = self._sampled_impostors(ids, vectors, labels)
            self._impostors = (size, impostors[np.isfinite(impostors)], identities)
            return self._impostors[1], identities

    def _out_of_domain(self, ids: np.ndarray, scores: dict) -> np.ndarray:
        """For each of `ids`, whether its image was found out of the model's domain when added."""
        domain = self.embedder.card.domain
        if domain is None:
            return np.zeros(len(ids), bool)
        return np.array([scores.get(int(i)) is not None and scores[int(i)] < domain.threshold
                         for i in ids], bool)

    def _sampled_impostors(self, ids: np.ndarray, vectors: np.ndarray, labels: dict) -> np.ndarray:
        """`nearest_impostors` of sampled items against the whole index: the first of their 64
        nearest with another label (and features), else the 64th distance (a lower bound:
        conservative)."""
        distances, neighbours = self._index.search(vectors, 64)
        blank = self._featureless_items(vectors, distances, neighbours)
        with self._store.read() as conn:
            found = np.unique(neighbours[neighbours >= 0])
            others = self._store.labels(conn, found)
            scores = self._store.domain_scores(conn, found)
        blank |= set(found[self._out_of_domain(found, scores)].tolist())
        out = np.empty(len(ids))
        for row, (item, d, n) in enumerate(zip(ids, distances, neighbours)):
            own = labels[int(item)]
            differs = [k for k, j in enumerate(n) if j >= 0 and j != item and int(j) not in blank
                       and (own is None or others.get(int(j)) != own)]
            out[row] = d[differs[0]] if differs else d[-1]
        return out

    @property
    def index_spec(self) -> IndexSpec:
        return IndexSpec.parse(self.record.index)

    def search(self, images: Images, k: int = 5, threshold: Optional[float] = None,
               operating_point: Optional[str] = None
               ) -> Union[list[Match], list[list[Match]]]:
        """The `k` nearest gallery items, nearest first, of one image (a path, bytes, a PIL image,
        or an array (H, W[, C])), or of each image in a list (or 4-D array). Each match carries
        its verdict under the request's rule (`rule()`); a query out of the model's domain is
        never verified."""
        batch, single = _as_batch(images)
        results = self.search_results(batch, k, threshold, operating_point)
        return results[0].matches if single else [r.matches for r in results]

    def search_results(self, images: Sequence[ImageSource], k: int = 5,
                       threshold: Optional[float] = None, operating_point: Optional[str] = None
                       ) -> list["SearchResult"]:
        """`search` with its reasons, for each image of a list: the matches, the rule used and
        the query's domain check (also when the gallery is empty)."""
        rule = self.rule(operating_point, threshold)  # a bad parameter fails before embedding
        vectors, checks = self.embedder.embed_checked(list(images))
        return [SearchResult(m, rule, c)
                for m, c in zip(self._search(vectors, k, rule, checks), checks)]

    def search_vectors(self, vectors: np.ndarray, k: int = 5, threshold: Optional[float] = None,
                       operating_point: Optional[str] = None) -> list[list[Match]]:
        """`search` for embeddings already computed with this gallery's model. Their images'
        domain was not checked here, and the verdicts say so (`in_domain` None), unless the
        embedding is one the model gives every image it finds no features in."""
        vectors = np.asarray(vectors, np.float32)
        unchecked = DomainCheck(None, None, "embeddings given directly: their images' domain "
                                "was not checked")
        checks = [DomainCheck.no_features() if blank else unchecked
                  for blank in self.embedder.is_featureless(vectors)]
        return self._search(vectors, k, self.rule(operating_point, threshold), checks)

    def _search(self, vectors: np.ndarray, k: int, rule: Rule, checks: Sequence[DomainCheck]
                ) -> list[list[Match]]:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 10_000:
            raise ConfigError(f"k must be an integer in 1..10000, not {k!r}")
        if vectors.ndim != 2 or vectors.shape[1] != self.record.embedding_dim:
            raise ConfigError(f"expected embeddings of shape (N, {self.record.embedding_dim}), "
                              f"not {vectors.shape}")
        with self._mutex:
            distances, ids = self._index.search(vectors, k + STALE_SPARE)
            items = self._cached_items({int(i) for i in ids.ravel() if i >= 0})
        blank = self._featureless_items(vectors, distances, ids)
        out = []
        for row_d, row_i, check in zip(distances, ids, checks):
            # An id missing from `items` is an item another process removed since our refresh.
            found = [(items[int(i)], float(d)) for d, i in zip(row_d, row_i)
                     if int(i) in items][:k]
            verdicts = self.embedder.verdicts.judge([d for _, d in found], rule, check)
            out.append([self._judged_item(item, v, rule, item.id in blank)
                        for (item, _), v in zip(found, verdicts)])
        return out

    def _featureless_items(self, vectors: np.ndarray, distances: np.ndarray, ids: np.ndarray
                           ) -> set[int]:
        """The matched items the model finds no features in. Only those at a featureless point's
        distance from their query (`Embedder.may_be_featureless`) have their stored embedding
        read and checked; one removed meanwhile (no embedding to read) counts as featureless."""
        maybe = self.embedder.may_be_featureless(vectors, distances) & (ids >= 0)
        if not maybe.any():
            return set()
        candidates = np.unique(ids[maybe])
        found, stored = self.embeddings(candidates.tolist())
        return set(candidates.tolist()) - set(found[~self.embedder.is_featureless(stored)].tolist())

    def _judged_item(self, item: Item, verdict, rule: Rule, featureless: bool) -> Match:
        """The match of `item` under the query's verdict, unless the item's own image is out of
        the model's domain (or one the model finds no features in): then the item's check
        decides, and it is not verified."""
        check = self.item_check(item, featureless)
        if check.in_domain is False and verdict.domain.in_domain is not False:
            verdict = self.embedder.verdicts.judge(verdict.distance, rule, check)[0]
        return _match(item, verdict, featureless, check.in_domain)

    def item_check(self, item: Item, featureless: bool = False) -> DomainCheck:
        """The domain check of a gallery item's image, as recorded when it was added (judged at
        the model's threshold now), or the one of an image the model finds no features in."""
        if featureless:
            return FEATURELESS_ITEM
        if item.domain_score is None and self.embedder.card.domain is not None:
            return UNCHECKED_ITEM
        return self._item_check(item.domain_score)

    def _score_check(self, score: Optional[float]) -> DomainCheck:
        """`item_check` of a recorded score (kept per score for the item cache's items:
        `_item_check`; a search judges k items)."""
        check = self.embedder.verdicts.domain_checks(
            None if score is None else np.array([score]), 1)[0]
        return replace(check, reason="the gallery item: " + check.reason)

    def _cached_items(self, ids: set[int]) -> dict[int, Item]:
        """The items of `ids` (mutex held): from the cache, the rest from the database (one
        query, ~0.5 ms saved on a search whose items are all cached). Items another process
        changed since they were cached are dropped first: only those, where the change log says
        which (clearing the cache at every change made each search after one read its items
        again, and with 10% of requests writing, most did)."""
        cache = self._item_cache
        stale = self._replica.take_stale()
        if stale is None:
            cache.clear()
        else:
            for i in stale:
                cache.pop(i, None)
        found = {}
        for i in ids & cache.keys():
            cache.move_to_end(i)
            found[i] = cache[i]
        missing = sorted(ids - found.keys())
        if missing:
            with self._store.read() as conn:
                read = self._store.items(conn, missing)
            found.update(read)
            cache.update(read)
            while len(cache) > ITEM_CACHE:
                cache.popitem(last=False)
        return found

    def identification(self, image: ImageSource, fpir: Optional[float] = None,
                       threshold: Optional[float] = None) -> "Identification":
        """1:N identification, with its reasons: the nearest item, judged at the threshold for
        the target `fpir` at this gallery's current size (or an explicit `threshold`)."""
        if len(self) == 0:
            raise ConfigError("the gallery is empty: there is nobody to identify against")
        rule = self.identification_rule(fpir, threshold)
        vectors, checks = self.embedder.embed_checked([image])
        # The nearest item that can be judged: items the model finds no features in all sit at
        # one point, so past them the search looks further (rarely: they are ~0.04% of images).
        k = 1
        while True:
            nearest = self._search(vectors, k, rule, checks)[0]
            best = _judgeable(nearest)
            if best is not None or len(nearest) < k or k == 10_000:
                break
            k = min(8 * k, 10_000)
        best = best or (nearest[0] if nearest else None)
        return Identification(best if best is not None and best.verified else None, best, rule,
                              checks[0])

    def identify(self, image: ImageSource, fpir: Optional[float] = None,
                 threshold: Optional[float] = None) -> Optional[Match]:
        """1:N: the enrolled item `image` shows, or None (nobody close enough for the target
        false-positive identification rate at this gallery's size, or a query out of the model's
        domain). `identification` says why."""
        return self.identification(image, fpir, threshold).match

    def verify(self, image: ImageSource, item_id: int, threshold: Optional[float] = None,
               operating_point: Optional[str] = None) -> Match:
        """1:1 verification: is `image` the same as gallery item `item_id`?"""
        rule = self.rule(operating_point, threshold)
        vectors, checks = self.embedder.embed_checked([image])
        with self._store.read() as conn:
            item = self._get(conn, item_id)
            _, stored = self._store.embeddings(conn, self.record.embedding_dim, [item.id])
        distance = float(euclidean(vectors[0], stored[0]))
        verdict = self.embedder.verdicts.judge(distance, rule, checks[0])[0]
        return self._judged_item(item, verdict, rule, bool(self.embedder.is_featureless(stored)[0]))

    def neighbours(self, item_id: int, k: int = 5, threshold: Optional[float] = None,
                   operating_point: Optional[str] = None) -> "SearchResult":
        """The `k` items nearest to a gallery item (itself left out), judged under the rule: its
        look-alikes, and its likely duplicates under other labels."""
        rule = self.rule(operating_point, threshold)
        with self._store.read() as conn:
            item = self._get(conn, item_id)
            _, stored = self._store.embeddings(conn, self.record.embedding_dim, [item.id])
        check = self.item_check(item, bool(self.embedder.is_featureless(stored)[0]))
        matches = self._search(stored, min(k + 1, 10_000), rule, [check])[0]
        return SearchResult([m for m in matches if m.id != item.id][:k], rule, check)

    def get(self, item_id: int) -> Item:
        with self._store.read() as conn:
            return self._get(conn, item_id)

    def _get(self, conn, item_id: int) -> Item:
        item_id = _check_id(item_id)
        found = self._store.items(conn, [item_id])
        if item_id not in found:
            raise NotFoundError(f"no item {item_id} in the gallery")
        return found[item_id]

    def image(self, item_id: int) -> tuple[bytes, str]:
        """The original image bytes of an item, and their media type (e.g. `image/png`)."""
        with self._store.read() as conn:
            return self._store.image(conn, _check_id(item_id))

    def items(self, offset: int = 0, limit: int = 100, label: Optional[str] = None) -> list[Item]:
        """Items in id order, a page at a time."""
        if offset < 0 or not 1 <= limit <= 10_000:
            raise ConfigError(f"offset must be >= 0 and limit in 1..10000, not {offset}, {limit}")
        with self._store.read() as conn:
            return self._store.list_items(conn, offset, limit, label)

    def embeddings(self, ids: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 (N, dim)): the stored embeddings of the given items (those that exist),
        or of every item, in id order."""
        with self._store.read() as conn:
            return self._store.embeddings(conn, self.record.embedding_dim, ids)

    def featureless_ids(self, batch: int = 50_000) -> list[int]:
        """The items the model finds no features in, which nothing is ever verified against
        (`Embedder.is_featureless`), from every stored embedding, `batch` at a time."""
        with self._mutex:
            ids = self._index.ids()
        found: list[int] = []
        for start in range(0, len(ids), batch):
            got, vectors = self.embeddings(ids[start:start + batch].tolist())
            found += got[self.embedder.is_featureless(vectors)].tolist()
        return found

    def domain_ids(self) -> tuple[list[int], list[int]]:
        """(the items whose image was out of the model's domain when added, the items never
        checked): nothing is ever verified against the first; `record_domain_checks` checks the
        second."""
        with self._store.read() as conn:
            unchecked = self._store.unchecked(conn)
            ids = self._store.ids(conn)
            scores = self._store.domain_scores(conn, ids)
        return (ids[self._out_of_domain(ids, scores)].tolist(),
                unchecked.tolist() if self.embedder.has_domain_model else [])

    def record_domain_checks(self, batch: int = 256, progress=None) -> int:
        """Check the images of the items added before enrolment checked them (from their stored
        originals) and record the result; returns how many were checked."""
        if not self.embedder.has_domain_model:
            return 0
        _, unchecked = self.domain_ids()
        for start in range(0, len(unchecked), batch):
            ids = unchecked[start:start + batch]
            images = [Original.from_bytes(self.image(i)[0], str(i), pre=self.embedder.card.preprocessing)
                      .image for i in ids]
            scores = self.embedder.domain_score(images)
            with self.writing():
                with self._store.write() as conn:
                    generation, _ = self._store.next_generation(conn)
                    self._store.set_domain_scores(conn, dict(zip(ids, scores.tolist())))
                    self._store.log(conn, generation, "edit", ids)
                with self._mutex:
                    for i in ids:
                        self._item_cache.pop(i, None)
                    self._impostors = None  # out-of-domain items are nobody's impostors
                    self._replica.changed(generation, lambda index: None)
            if progress is not None:
                progress.update(len(ids))
        return len(unchecked)

    def known(self, hashes: Sequence[str]) -> dict[str, int]:
        """{sha256: id} of the images (by the sha256 of their bytes) already in the gallery."""
        with self._store.read() as conn:
            return self._store.known(conn, hashes)

    def stats(self) -> GalleryStats:
        with self._mutex, self._store.read() as conn:
            return _stats(self.path, self._store, conn, self.record, self._index, self.rule(),
                          self.fpir, self._replica.generation)

    def refresh(self) -> bool:
        """Catch up with changes committed since (by this or another process), and save the
        index if a snapshot is due and no writer is busy. True if anything changed."""
        with self._mutex:
            before = self._replica.generation
            self._replica.sync()
            if self._replica.snapshot_due():
                self._replica.flush()
            return self._replica.generation != before

    # --- writing ---------------------------------------------------------------------------------

    def revoke_session(self, sid: str, until: dt.datetime) -> None:
        """Record that web session `sid` signed out (`webapp.access`), until it would expire."""
        self._store.revoke_session(sid, until)

    def session_revoked(self, sid: str) -> bool:
        return self._store.session_revoked(sid)

    @contextmanager
    def writing(self) -> Iterator["Gallery"]:
        """Hold the writer lock for several changes. Each change takes it anyway; when the
        outermost `writing` ends, the index file is saved if a snapshot is due
        (`replica.Replica.snapshot_due`)."""
        # The writer lock first, without the mutex: readers of this process search on while a
        # writer waits for another process (the mutex is held only to change the index).
        with self._lock:
            outermost = self._lock.depth == 1
            if outermost:
                with self._mutex:
                    self._replica.sync()  # another process may have written since
            yield self
            replica = self._replica
            if outermost and replica.snapshot_due():
                # Under the mutex: a server sharing the database (not this folder's lock) may
                # write meanwhile, and this process's readers replay it into the index.
                with self._mutex:
                    replica.save()

    def add(self, images: Images, labels: Union[None, str, Sequence[Optional[str]]] = None,
            metadata: Union[None, dict, Sequence[dict]] = None,
            sources: Optional[Sequence[str]] = None) -> list[int]:
        """Add images (paths, bytes, PIL images or arrays); returns their ids, in order
        (`add_originals` also says which were new).

        An image already in the gallery (same bytes, by sha256) is not added again: its existing
        id is returned. `labels` and `metadata` (JSON-able dicts) go with the images, one each, or
        one for all; `sources` names them (default: the path, or a description). If any image is
        bad, nothing is added."""
        batch, _ = _as_batch(images)
        labels = _per_image(labels, len(batch), "labels", str, optional=True)
        metadata = _per_image(metadata, len(batch), "metadata", dict, optional=True)
        originals = [Original.from_source(image, self.embedder.card.preprocessing) for image in batch]
        if sources is not None:
            for original, name in zip(originals, _per_image(sources, len(batch), "sources", str)):
                original.name = name
        return self.add_originals(originals, labels, metadata).ids

    def add_originals(self, originals: Sequence[Original], labels: Sequence[Optional[str]],
                      metadata: Sequence[dict], pixels: Optional[np.ndarray] = None,
                      vectors: Optional[np.ndarray] = None,
                      domain_scores: Optional[np.ndarray] = None) -> Added:
        """`add` for images already read and decoded (`records.Original`), as a folder ingest has;
        `pixels`: their model input (`embedder.prepare`), or `vectors` and `domain_scores`: their
        embeddings and domain scores by this gallery's model, if already made. Every new image's
        domain is checked and recorded: one out of domain is added (it is the user's image), but
        nothing is ever verified against it. Which images were new is decided under the writer
        lock, so concurrent adds of one image create it once."""
        for m in metadata:
            check_metadata(m)
        for label in labels:
            if label is not None:
                check_text("label", label, MAX_LABEL_LENGTH)
        with self.writing():
            known = self.known([o.sha256 for o in originals])
            first: dict[str, int] = {}  # the first of several equal images in this batch
            new = [i for i, o in enumerate(originals)
                   if o.sha256 not in known and first.setdefault(o.sha256, i) == i]
            if new:
                vectors, scores = self._embedded(originals, new, pixels, vectors, domain_scores)
                ids: list[int] = []
                with self._store.write() as conn:
                    # Another server on the same database may have added some meanwhile (the
                    # folder's lock is per host; the database's row lock is for all of them).
                    known.update(self._store.known(conn, [originals[i].sha256 for i in new]))
                    keep = [k for k, i in enumerate(new) if originals[i].sha256 not in known]
                    new, vectors = [new[k] for k in keep], vectors[keep]
                    scores = None if scores is None else scores[keep]
                    if new:
                        generation, first_id = self._store.next_generation(conn, len(new))
                        ids = self._store.insert(
                            conn, range(first_id, first_id + len(new)),
                            [originals[i] for i in new], [labels[i] for i in new],
                            [metadata[i] for i in new], vectors, dt.datetime.now(dt.timezone.utc),
                            scores)
                        self._store.log(conn, generation, "add", ids)
                if ids:
                    with self._mutex:
                        self._replica.changed(
                            generation, lambda index: index.add(np.asarray(ids), vectors),
                            added=len(ids))
                known.update({originals[i].sha256: item_id for i, item_id in zip(new, ids)})
            all_ids = [known[o.sha256] for o in originals]
            found = self._item_checks(sorted(set(all_ids)))
            # (An item another server removed meanwhile has no check to read.)
            checks = [found.get(i, UNCHECKED_ITEM) for i in all_ids]
            created = set(new)
            return Added(all_ids, [i in created for i in range(len(originals))],
                         [c.featureless for c in checks], checks)

    def _embedded(self, originals: Sequence[Original], new: list[int],
                  pixels: Optional[np.ndarray], vectors: Optional[np.ndarray],
                  scores: Optional[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The embeddings and domain scores (None: the model has no domain model) of the new
        images: as given, else from their model input (`pixels`, else prepared here)."""
        domain = self.embedder.has_domain_model
        if vectors is not None and (scores is not None or not domain):
            return (np.asarray(vectors, np.float32)[new],
                    None if scores is None else np.asarray(scores, np.float64)[new])
        batch = pixels[new] if pixels is not None else \
            self.embedder.prepare([originals[i].image for i in new])
        if vectors is None:
            return self.embedder.embed_and_score_prepared(batch)
        return (np.asarray(vectors, np.float32)[new],
                self.embedder.domain_score_prepared(batch) if domain else None)

    def _item_checks(self, ids: Sequence[int]) -> dict[int, DomainCheck]:
        """Each item's check (`item_check`), from its stored embedding and domain score."""
        with self._store.read() as conn:
            found, stored = self._store.embeddings(conn, self.record.embedding_dim, ids)
            items = self._store.items(conn, ids)
        blank = dict(zip(found.tolist(), self.embedder.is_featureless(stored).tolist()))
        return {i: self.item_check(items[i], blank.get(i, True)) for i in ids if i in items}

    def edit(self, item_id: int, label: Any = UNCHANGED, metadata: Any = UNCHANGED) -> Item:
        """Change an item's label (None: no label) and/or metadata; what is not given stays.
        Returns the item as it is now. Unknown id: `NotFoundError`."""
        item_id = _check_id(item_id)
        values = {}
        if label is not UNCHANGED:
            if label is not None:
                check_text("label", label, MAX_LABEL_LENGTH)
            values["label"] = label
        if metadata is not UNCHANGED:
            check_metadata(metadata)
            values["metadata"] = metadata
        if not values:
            return self.get(item_id)
        with self.writing():
            with self._store.write() as conn:
                self._get(conn, item_id)
                generation, _ = self._store.next_generation(conn)
                self._store.edit(conn, item_id, **values)
                self._store.log(conn, generation, "edit", [item_id])
            with self._mutex:
                self._item_cache.pop(item_id, None)
                self._replica.changed(generation, lambda index: None)
        return self.get(item_id)

    def remove(self, ids: Union[int, Sequence[int]]) -> None:
        """Remove items (rows, images and vectors). Unknown ids: `NotFoundError`, nothing removed."""
        ids = sorted({_check_id(i) for i in ([ids] if isinstance(ids, (int, np.integer)) else ids)})
        if not ids:
            return
        with self.writing():
            with self._store.write() as conn:
                missing = self._store.missing(conn, ids)
                if missing:
                    shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
                    raise NotFoundError(f"no item(s) {shown} in the gallery; nothing was removed")
                generation, _ = self._store.next_generation(conn)
                hashes = self._store.delete(conn, ids)
                self._store.log(conn, generation, "remove", ids)
            self._store.discard(hashes)
            with self._mutex:
                for i in ids:
                    self._item_cache.pop(i, None)
                self._replica.changed(generation,
                                      lambda index: index.remove(np.asarray(ids, np.int64)),
                                      removed=len(ids))
            self._store.purge()

    def set_index(self, index: Union[str, IndexSpec]) -> None:
        """Switch to another index kind or parameters (rebuilt from the stored embeddings)."""
        spec = index if isinstance(index, IndexSpec) else IndexSpec.parse(index)
        with self.writing():
            if str(spec) == self.record.index:
                return
            with self._store.write() as conn:
                generation, _ = self._store.next_generation(conn)
                self._store.update_record(conn, index=str(spec))
                self._store.log(conn, generation, "record")
            with self._mutex:
                self._replica.sync()  # the spec changed: rebuilt

    def set_verdict(self, operating_point: Optional[str] = None,
                    threshold: Optional[float] = None, fpir: Optional[float] = None) -> None:
        """Set this gallery's default 1:1 rule (an operating point or a threshold; neither:
        back to "balanced") and its default target FPIR for `identify` (None: 0.01)."""
        rule = self.embedder.verdicts.rule(operating_point, threshold)  # checks both
        threshold = None if threshold is None else rule.threshold
        fpir = None if fpir is None else check_fpir(fpir)
        with self.writing():
            with self._store.write() as conn:
                generation, _ = self._store.next_generation(conn)
                self._store.update_record(conn, operating_point=operating_point,
                                          threshold=threshold, fpir=fpir)
                self._store.log(conn, generation, "record")
            with self._mutex:
                self._replica.record = replace(self.record, operating_point=operating_point,
                                               threshold=threshold, fpir=fpir)
                self._replica.changed(generation, lambda index: None)

    def flush(self) -> None:
        """Save the index file now if it has unsaved changes, unless another process is writing
        or has written since (its index file is the newer one; the database is the record)."""
        with self._mutex:
            self._replica.flush()

    def _check_model(self, record: GalleryRecord) -> None:
        folder.check_model(self.path, record.model_id, self.embedder.model_id)


# --- helpers ---------------------------------------------------------------------------------------

def read_stats(path: Union[str, Path], card, url: Optional[str] = None) -> GalleryStats:
    """A gallery's numbers read without loading its model, whose card alone decides the verdict
    defaults (no TensorFlow: `siamese-gallery stats` answers in a moment). The index is as last
    saved; opening the gallery catches it up."""
    path = Path(path)
    store, record = folder.connect(path, url)
    try:
        if record.model_id != card.model_id:
            folder.check_model(path, record.model_id, card.model_id)
        index, _, _ = VectorIndex.load(path, {
            "gallery_id": record.gallery_id, "model_id": record.model_id,
            "spec": str(IndexSpec.parse(record.index)), "dim": record.embedding_dim})
        default = record.threshold if record.threshold is not None else record.operating_point
        rule = Verdicts(card).rule(default=default)
        with store.read() as conn:
            return _stats(path, store, conn, record, index, rule,
                          DEFAULT_FPIR if record.fpir is None else record.fpir,
                          record.generation)
    finally:
        store.close()


def _stats(path: Path, store: Store, conn, record: GalleryRecord, index: Optional[VectorIndex],
           rule: Rule, fpir: float, generation: int) -> GalleryStats:
    labels = store.label_counts(conn)
    file = path / INDEX_FILE
    recall = None if index is None else index.recall
    return GalleryStats(
        path=str(path), database=store.engine.url.render_as_string(True),
        items=sum(labels.values()), labels={("" if k is None else k): v for k, v in labels.items()},
        model_id=record.model_id, embedding_dim=record.embedding_dim, threshold=rule.threshold,
        operating_point=rule.operating_point, fpir=fpir,
        index=(index.describe() if index is not None
               else f"{IndexSpec.parse(record.index)} (no current index file: opening builds it)"),
        vectors=0 if index is None else index.index.ntotal,
        recall_at_10=(None if index is None else 1.0 if index.exact
                      else recall.at_10 if recall else None),
        recall_measured_on=recall.items if recall else None,
        index_bytes=file.stat().st_size if file.exists() else None,
        generation=generation, created=record.created.isoformat(timespec="seconds"),
        originals=record.originals or "database")


def _as_batch(images: Images) -> tuple[list, bool]:
    """(list of images, whether one image was given). A list, a tuple or a 4-D array is a batch;
    anything else, a 2-D or 3-D array included, is one image."""
    if isinstance(images, (list, tuple)):
        return list(images), False
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), False
    return [images], True


def _per_image(values, n: int, what: str, kind: type, optional: bool = False) -> list:
    """One value per image: `values` is one value for all, or a sequence of n."""
    if values is None and optional:
        return [None if kind is str else {}] * n
    if isinstance(values, kind):
        return [values] * n
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise ConfigError(f"{what} must be a {kind.__name__} or a list, not {values!r}")
    values = list(values)
    if len(values) != n:
        raise ConfigError(f"{len(values)} {what} for {n} image(s)")
    bad = [v for v in values if not (isinstance(v, kind) or (optional and v is None))]
    if bad:
        raise ConfigError(f"each of the {what} must be a {kind.__name__}, not {bad[0]!r}")
    return [({} if kind is dict else None) if v is None else v for v in values]


def _judgeable(matches: Sequence[Match]) -> Optional[Match]:
    """The first of `matches` whose item can be judged: in the model's domain, with features."""
    return next((m for m in matches if not m.featureless and m.item_in_domain is not False), None)


def _match(item: Item, verdict, featureless: bool = False,
           item_in_domain: Optional[bool] = None) -> Match:
    return Match(id=item.id, label=item.label, verdict=verdict, metadata=item.metadata,
                 source=item.source, sha256=item.sha256, featureless=featureless,
                 item_in_domain=item_in_domain)


MAX_ID = 2**63 - 1  # ids are BIGINT in every database


ID_DIGITS = "[0-9]{1,19}"  # an id as written: ASCII digits (int() reads "٣" as 3 too)


def parse_id(text: str) -> int:
    """An item id as written in a URL, a form or a command: ASCII digits only."""
    if not re.fullmatch(ID_DIGITS, text):
        raise NotFoundError(f"item ids are written in the digits 0-9, not {text[:30]!r}")
    return _check_id(int(text))


def _check_id(item_id: Any) -> int:
    if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
        raise NotFoundError(f"item ids are integers, not {item_id!r}")
    if not 1 <= item_id <= MAX_ID:
        raise NotFoundError(f"no item {item_id} in the gallery (ids are 1 to {MAX_ID})")
    return int(item_id)
