"""The vector index: FAISS, L2, where FAISS ids are the gallery's item ids.

Three kinds, each explicit about what FAISS runs:
- `flat`: `IndexFlatL2`, exact. The default; right up to a few hundred thousand vectors.
- `hnsw`: `IndexHNSWFlat(d, m)`, a graph; sub-millisecond at any size we target. HNSW cannot
  delete, so removed ids become tombstones, filtered out of every search by an `IDSelector`, and
  the graph is rebuilt once they pass a fifth of it. Before the index is saved, each tombstone's
  stored vector is overwritten with that of its nearest live item (`scrub`), so no deleted
  embedding reaches the file, and the graph still routes through the node.
- `ivf`: `IndexIVFFlat` with `nlist` lists. It needs training, so a small gallery stays exact
  (a flat index) until it holds 39 vectors per list, and is retrained when it has grown 4x.

Flat and HNSW are wrapped in `IndexIDMap2`. A trained IVF index is not: it stores our ids itself,
and `IndexIDMap` over IVF gives wrong ids after `remove_ids` (IDMap assumes the inner index
renumbers like a flat one; FAISS issues #1379, #4535).

All three keep the full float32 vectors, so the distance of every returned match is exact and
`verified = distance <= threshold` means what calibration measured. (PQ or SQ codes would save
memory but return approximate distances, which would blur the threshold.)

Search parameters (`ef_search`, `nprobe`) travel with each call in a fresh `SearchParameters`
object; nothing is set on the shared index. FAISS returns squared L2: `encoder.distance.from_squared`
turns it into the distance callers see.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import faiss
import numpy as np

from encoder.distance import from_squared
from encoder.errors import ConfigError
from encoder.params import Range, check_fields, param

from .files import replace_atomically, sha256_file, write_json

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "index.json"
MANIFEST_FORMAT = 1
KINDS = {"flat": (), "hnsw": ("m", "ef_construction", "ef_search"), "ivf": ("nlist", "nprobe")}
POINTS_PER_LIST = 39  # FAISS warns when k-means gets fewer training points per centroid
TRAIN_POINTS_PER_LIST = 64  # ivf: k-means sample (FAISS would take up to 256 per list: slow, no better)
TOMBSTONE_LIMIT = 0.2  # hnsw: rebuild once this share of the graph is deleted items
RETRAIN_GROWTH = 4  # ivf: retrain once the index holds this many times its training set
FEW_QUERIES = 16  # below this many queries, search on one thread (see `_threads_for`)


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index a gallery uses, and its parameters. Text form: `hnsw:m=16,ef_search=64`."""

    kind: str = "flat"
    # hnsw: links per node (memory ~ 8*m bytes per vector beyond the vector itself)
    m: int = param(16, check=Range(4, 128, integer=True))
    # hnsw: candidate list while building (quality vs build time)
    ef_construction: int = param(80, check=Range(8, 4096, integer=True))
    # hnsw: candidate list while searching (recall vs latency)
    ef_search: int = param(64, check=Range(1, 4096, integer=True))
    # ivf: number of lists; 0 = auto, the power of two nearest sqrt(N) at training
    nlist: int = param(0, check=Range(0, 1 << 20, integer=True))
    nprobe: int = param(16, check=Range(1, 1 << 20, integer=True))  # ivf: lists visited per query

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown index kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        check_fields(self, name=lambda field: f"index parameter {field}")

    @classmethod
    def parse(cls, text: str) -> "IndexSpec":
        """`flat`, `hnsw`, `ivf`, optionally with `:name=value,...` (names as in this class)."""
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r} in {text!r}; expected one of "
                              f"{', '.join(KINDS)}, e.g. hnsw:m=16,ef_search=64")
        values: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            name, eq, value = part.partition("=")
            name = name.strip().lower()
            if not eq or name not in KINDS[kind]:
                allowed = ", ".join(KINDS[kind]) or "none"
                raise ConfigError(f"{part!r} in {text!r} is not a parameter of {kind} indexes "
                                  f"(parameters: {allowed})")
            value = value.strip().lower()
            if name == "nlist" and value == "auto":
                value = "0"
            try:
                values[name] = int(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r} in {text!r} is not an integer") from None
        return cls(kind=kind, **values)

    def __str__(self) -> str:
        params = [f"{n}={'auto' if n == 'nlist' and not getattr(self, n) else getattr(self, n)}"
                  for n in KINDS[self.kind]]
        return self.kind + (":" + ",".join(params) if params else "")

    def nlist_for(self, n: int) -> int:
        if self.nlist:
            return self.nlist
        # sqrt(N) lists, not FAISS's rule of thumb of 4..16 sqrt(N): at 1M vectors on 2 cores, 4,096
        # lists took 150 s to train for 0.2 ms searches; 1,024 lists train in 17 s and answer in 0.8 ms.
        return max(16, 2 ** round(math.log2(max(math.sqrt(max(n, 1)), 1))))

    def trainable(self, n: int) -> bool:
        """ivf: whether `n` vectors are enough to train its lists."""
        return n >= POINTS_PER_LIST * self.nlist_for(n)

    def train_threshold(self) -> int:
        """ivf: the fewest vectors it trains on (1,248 with auto nlist); below, it stays exact."""
        n = POINTS_PER_LIST * self.nlist_for(0)
        while not self.trainable(n):
            n = POINTS_PER_LIST * self.nlist_for(n)
        return n


@dataclass(frozen=True)
class Recall:
    """recall@k of an index against exact search, on `queries` of its own vectors (each query's
    own id left out of both lists), measured when the index was built on `items` vectors."""

    at_10: float
    queries: int
    items: int


def _threads_for(rows: int) -> None:
    """Set this thread's OpenMP threads for a FAISS call on `rows` vectors: one for a few queries
    or vectors, all the machine's otherwise. Splitting one query over threads costs more than it
    saves, and on a busy machine the threads' barrier can cost 10x the search (16 ms instead of
    1 ms for 100k vectors here). OpenMP's thread count is per calling thread: others are untouched.
    A thread keeps its setting until the next call needs the other, so a service's searches do not
    call into FAISS three more times each (every call lets the GIL go to another thread)."""
    default = getattr(_omp, "default", None)
    if default is None:
        default = _omp.default = _omp.threads = faiss.omp_get_max_threads()
    wanted = 1 if rows < FEW_QUERIES else default
    if _omp.threads != wanted:
        faiss.omp_set_num_threads(wanted)
        _omp.threads = wanted


_omp = threading.local()  # per thread: OpenMP's thread count at first sight, and as set now


class VectorIndex:
    """A FAISS index of (id, vector) pairs: `add`, `remove`, `search`, `save`, `load`."""

    def __init__(self, spec: IndexSpec, dim: int, index: faiss.Index, trained_on: int = 0,
                 deleted: Optional[np.ndarray] = None, recall: Optional[Recall] = None,
                 scrubbed: Optional[np.ndarray] = None):
        self.spec = spec
        self.dim = dim
        self.index = index
        self.trained_on = trained_on  # ivf: vectors its lists were trained on; 0 = still exact
        self.recall = recall
        self._set_deleted(np.zeros(0, np.int64) if deleted is None else deleted)
        # hnsw: the tombstones whose stored vector has been overwritten (`scrub`)
        self._scrubbed = np.zeros(0, np.int64) if scrubbed is None else np.asarray(scrubbed, np.int64)

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def build(cls, spec: IndexSpec, dim: int, ids: np.ndarray, vectors: np.ndarray,
              measure: bool = True) -> "VectorIndex":
        """An index of these vectors; ivf is trained when there are enough; recall@10 is measured
        for the approximate kinds."""
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, dim)
        trained_on = 0
        if spec.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, spec.m)
            inner.hnsw.efConstruction = spec.ef_construction
        elif spec.kind == "ivf" and spec.trainable(len(vectors)):
            nlist = spec.nlist_for(len(vectors))
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            sample = np.random.default_rng(0).permutation(len(vectors))[:TRAIN_POINTS_PER_LIST * nlist]
            _threads_for(len(sample))
            ivf.train(vectors[np.sort(sample)])
            trained_on = len(vectors)
        else:  # flat, or ivf too small to train
            inner = faiss.IndexFlatL2(dim)
        self = cls(spec, dim, ivf if trained_on else faiss.IndexIDMap2(inner), trained_on)
        self.add(ids, vectors)
        if measure and not self.exact and len(vectors):
            self.recall = measure_recall(self, ids, vectors)
        return self

    @property
    def exact(self) -> bool:
        return self.spec.kind == "flat" or (self.spec.kind == "ivf" and not self.trained_on)

    def describe(self) -> str:
        """The index as it runs now, e.g. `ivf:nlist=auto,nprobe=16 (exact until 1,248 vectors)`."""
        if self.spec.kind == "ivf":
            if not self.trained_on:
                return f"{self.spec} (exact until {self.spec.train_threshold():,} vectors)"
            return f"{self.spec} ({self.index.nlist} lists, trained on {self.trained_on:,} vectors)"
        return str(self.spec)

    def wants_rebuild(self) -> Optional[str]:
        """Why the index should be rebuilt from all vectors now, or None."""
        n = len(self)
        if self.spec.kind == "hnsw" and self.index.ntotal and \
                len(self._deleted) > TOMBSTONE_LIMIT * self.index.ntotal:
            return f"{len(self._deleted):,} of its {self.index.ntotal:,} graph nodes are deleted items"
        if self.spec.kind == "ivf" and not self.trained_on and self.spec.trainable(n):
            return f"{n:,} vectors are enough to train {self.spec.nlist_for(n)} IVF lists"
        if self.spec.kind == "ivf" and self.trained_on and n >= RETRAIN_GROWTH * self.trained_on:
            return f"it has grown from {self.trained_on:,} to {n:,} vectors since it was trained"
        return None

    # --- changing --------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            _threads_for(len(ids))
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32).reshape(-1, self.dim),
                                    np.ascontiguousarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        if self.spec.kind == "hnsw":  # the graph cannot drop nodes: hide them from searches
            self._set_deleted(np.union1d(self._deleted, ids))
        else:
            _threads_for(len(ids))
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def scrub(self) -> int:
        """hnsw: overwrite the stored vector of each tombstone not yet scrubbed with the vector of
        its nearest live item, so that the deleted embedding is gone from memory and from the
        next saved file. The node stays in the graph, now a copy of a live neighbour: recall@10
        at ef_search 32 with a fifth of the graph scrubbed tombstones, 0.9946 against 0.999
        with the tombstones intact (50,000 clustered vectors, measured 2026-12-02; zeroing them
        instead gave 0.25). Returns how many were scrubbed."""
        todo = np.setdiff1d(self._deleted, self._scrubbed)
        if self.spec.kind != "hnsw" or not len(todo) or len(self) == 0:
            return 0
        id_map = faiss.vector_to_array(self.index.id_map)
        position = {int(i): p for p, i in enumerate(id_map)}
        inner = faiss.downcast_index(self.index.index)
        stored = faiss.rev_swig_ptr(faiss.downcast_index(inner.storage).get_xb(),
                                    self.index.ntotal * self.dim).reshape(-1, self.dim)
        todo = np.array([i for i in todo if int(i) in position], np.int64)
        rows = np.array([position[int(i)] for i in todo], np.int64)
        done = []
        for start in range(0, len(rows), 10_000):
            chunk = rows[start:start + 10_000]
            _, nearest = self.search(stored[chunk], 1)  # live items only (the selector)
            found = nearest[:, 0] >= 0
            stored[chunk[found]] = stored[[position[int(i)] for i in nearest[found, 0]]]
            done.append(todo[start:start + 10_000][found])
        done = np.concatenate(done) if done else np.zeros(0, np.int64)
        self._scrubbed = np.union1d(self._scrubbed, done)
        return len(done)

    def _set_deleted(self, deleted: np.ndarray) -> None:
        self._deleted = np.asarray(deleted, np.int64)
        # Built once per change, shared read-only by searches (each search wraps it in its own params).
        self._selector = (faiss.IDSelectorNot(faiss.IDSelectorBatch(self._deleted))
                          if len(self._deleted) else None)

    def ids(self) -> np.ndarray:
        """The live ids, sorted."""
        if isinstance(self.index, faiss.IndexIDMap2):
            stored = faiss.vector_to_array(self.index.id_map)
        else:  # a trained IVF index: the ids of every list
            lists = self.index.invlists
            stored = np.concatenate([np.zeros(0, np.int64)] + [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(self.index.nlist) if lists.list_size(i)])
        return np.setdiff1d(stored.astype(np.int64), self._deleted)  # sorted and unique

    def __len__(self) -> int:
        return self.index.ntotal - len(self._deleted)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live entries, read back from the index (all kinds keep them)."""
        if isinstance(self.index, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(self.index.id_map)
            vectors = self.index.index.reconstruct_n(0, self.index.ntotal) if len(ids) else \
                np.zeros((0, self.dim), np.float32)
        else:  # a trained IVF index: each list holds ids and raw float32 codes
            lists, parts = self.index.invlists, []
            for i in range(self.index.nlist):
                n = lists.list_size(i)
                if n:
                    parts.append((faiss.rev_swig_ptr(lists.get_ids(i), n).copy(),
                                  faiss.rev_swig_ptr(lists.get_codes(i), n * lists.code_size)
                                  .view(np.float32).reshape(n, self.dim).copy()))
            ids = np.concatenate([np.zeros(0, np.int64)] + [p[0] for p in parts])
            vectors = np.concatenate([np.zeros((0, self.dim), np.float32)] + [p[1] for p in parts])
        live = ~np.isin(ids, self._deleted)
        return ids[live].astype(np.int64), vectors[live]

    def update_recall(self) -> None:
        """Measure recall@10 again if it was never measured or the index has doubled since."""
        if not self.exact and len(self) and (self.recall is None or len(self) >= 2 * self.recall.items):
            self.recall = measure_recall(self, *self.vectors())

    # --- searching -------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, ef_search: Optional[int] = None,
               nprobe: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """(Euclidean distances, ids), each (len(queries), k); missing results have id -1."""
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        params = None
        if self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(ef_search or self.spec.ef_search, k))
            if self._selector is not None:
                params.sel = self._selector
        elif self.spec.kind == "ivf" and self.trained_on:
            params = faiss.SearchParametersIVF(nprobe=min(nprobe or self.spec.nprobe,
                                                          self.index.nlist))
        _threads_for(len(queries))
        squared, ids = self.index.search(queries, k, params=params)
        return from_squared(squared), ids

    # --- files -----------------------------------------------------------------------------------

    def save(self, folder: Path, tag: dict[str, Any]) -> None:
        """Write `index.faiss`, then `index.json` (each atomically), tombstones scrubbed first.
        `tag` says which database state the index reflects (gallery id, model id, generation)."""
        self.scrub()
        digest = {}

        def write(tmp: Path) -> None:
            try:
                faiss.write_index(self.index, str(tmp))
            except RuntimeError as exc:  # FAISS reports a failed write (disk full...) this way
                full = "No space left on device" in str(exc)
                raise OSError(errno.ENOSPC if full else errno.EIO,
                              os.strerror(errno.ENOSPC) if full else f"FAISS: {exc}") from None
            digest["sha256"], digest["bytes"] = sha256_file(tmp), tmp.stat().st_size

        replace_atomically(folder / INDEX_FILE, write)
        write_json(folder / MANIFEST_FILE, {
            "format": MANIFEST_FORMAT, **tag, "spec": str(self.spec), "dim": self.dim,
            "vectors": len(self), "ntotal": self.index.ntotal, "trained_on": self.trained_on,
            "deleted": self._deleted.tolist(), "scrubbed": self._scrubbed.tolist(),
            "recall": asdict(self.recall) if self.recall else None,
            **digest, "saved": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})

    @classmethod
    def load(cls, folder: Path, expect: dict[str, Any]
             ) -> tuple[Optional["VectorIndex"], dict[str, Any], str]:
        """(index, manifest, "") when `index.faiss` is intact and its manifest matches `expect`
        (gallery id, model id, spec, dim); else (None, manifest or {}, why not)."""
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
        except FileNotFoundError:
            return None, {}, f"no {MANIFEST_FILE}"
        except (OSError, ValueError) as exc:
            return None, {}, f"{MANIFEST_FILE} is unreadable ({exc})"
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            return None, {}, f"{MANIFEST_FILE} is not a format-{MANIFEST_FORMAT} manifest"
        generation = manifest.get("generation")
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            # Callers compare it with the database's: anything but a count makes it useless.
            return None, {}, f"{MANIFEST_FILE} has no valid generation ({generation!r})"
        for key, value in expect.items():
            if manifest.get(key) != value:
                return None, manifest, f"it was built for {key} {manifest.get(key)!r}, not {value!r}"
        path = folder / INDEX_FILE
        try:
            if path.stat().st_size != manifest.get("bytes") or sha256_file(path) != manifest.get("sha256"):
                return None, manifest, f"{INDEX_FILE} does not match its manifest (damaged or replaced)"
            index = faiss.read_index(str(path))
        except FileNotFoundError:
            return None, manifest, f"no {INDEX_FILE}"
        except (OSError, RuntimeError) as exc:
            return None, manifest, f"{INDEX_FILE} cannot be read ({exc})"
        if not isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVFFlat)) or \
                index.ntotal != manifest.get("ntotal"):
            return None, manifest, f"{INDEX_FILE} does not hold the index its manifest describes"
        try:
            spec = IndexSpec.parse(manifest["spec"])
            recall = Recall(**manifest["recall"]) if manifest.get("recall") else None
            loaded = cls(spec, int(manifest["dim"]), index, int(manifest.get("trained_on", 0)),
                         np.asarray(manifest.get("deleted", []), np.int64), recall,
                         np.asarray(manifest.get("scrubbed", []), np.int64))
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            return None, manifest, f"{MANIFEST_FILE} is malformed ({exc})"
        return loaded, manifest, ""


def saved_generation(folder: Path) -> Optional[int]:
    """The database generation of the index file in `folder`, by its manifest (None: unknown)."""
    try:
        generation = json.loads((folder / MANIFEST_FILE).read_text()).get("generation")
    except (OSError, ValueError, AttributeError):
        return None
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else None


def measure_recall(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray, k: int = 10,
                   queries: int = 200, seed: int = 0) -> Recall:
    """recall@k of `index` against exact search over `vectors`, queried with a sample of them."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(vectors), min(queries, len(vectors)), replace=False))
    q = vectors[sample]
    _threads_for(len(q))
    _, exact = faiss.knn(q, vectors, k + 1)
    _, found = index.search(q, k + 1)
    scores = []
    for own, truth_rows, got in zip(ids[sample], exact, found):
        truth = [t for t in ids[truth_rows[truth_rows >= 0]] if t != own][:k]
        hits = [g for g in got if g != own and g >= 0][:k]
        if truth:
            scores.append(len(set(hits).intersection(truth)) / len(truth))
    return Recall(at_10=round(float(np.mean(scores)) if scores else 1.0, 4), queries=len(sample),
                  items=len(vectors))

