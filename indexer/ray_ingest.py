"""Filling a gallery on Ray: the same sources, report and guarantees as `ingest.ingest`, with the
reading, hashing, decoding and embedding spread over a Ray cluster (Ray Data `map_batches`, one
`Embedder` per actor).

Each actor reads its batch of files as the single-process path does (`ingest.read_batch`: read,
hash, skip what the gallery's database already holds, so a rerun after an interruption embeds
only what is new, decode), embeds the rest, and hands back bytes, hash and embedding. This process, the gallery's one writer, adds each
batch with `Gallery.add_originals`, which decides under the writer lock what is new: an image is
added once however often it appears, and an interrupted run resumes by running it again.

The actors reach the database by its URL: on several machines the gallery's metadata must be in
a database they all reach (PostgreSQL, `--db-url`), and the files and the model at the same paths
on every node. `ray` is the optional extra `.[ray]`.
"""
from __future__ import annotations

import importlib.util
import logging
import socket
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from encoder.errors import BadImageError, ConfigError

from .folder import sqlite_url
from .gallery import Gallery
from .ingest import BATCH_SIZE, IngestReport, Source, _fail, read_batch
from .records import Original


class ReadAndEmbed:
    """A Ray Data actor: one model and one database connection, loaded once per actor.
    `settings`: {"model_dir", "db_url"}, set on a subclass made for the run."""

    settings: dict[str, str] = {}

    def __init__(self):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)  # one CPU per actor
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from encoder import Embedder

        from .store import Store

        self.embedder = Embedder.load(self.settings["model_dir"])
        self.store = Store(self.settings["db_url"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        sources = [Source(str(path)) for path in batch["path"]]
        index_of = {id(s): int(i) for s, i in zip(sources, batch["index"])}

        def known(hashes: list[str]) -> dict[str, int]:
            with self.store.read() as conn:
                return self.store.known(conn, hashes)

        read = read_batch(sources, known, self.embedder.prepare,
                              self.embedder.card.preprocessing)
        vectors = np.zeros((0, self.embedder.embedding_dim), np.float32)
        scores = None
        if read.originals:  # with the enrolment's domain check, here where the model input is
            vectors, scores = self.embedder.embed_and_score_prepared(read.pixels)
        if scores is None:  # NaN: no domain model
            scores = np.full(len(read.originals), np.nan)
        rows: dict[str, list] = {k: [] for k in ("index", "sha256", "data", "error", "state",
                                                 "vector", "score")}

        def row(source: Source, state: str, original: Optional[Original] = None,
                error: str = "", vector: Optional[np.ndarray] = None,
                score: float = np.nan) -> None:
            rows["score"].append(float(score))
            rows["index"].append(index_of[id(source)])
            rows["state"].append(state)
            rows["sha256"].append(original.sha256 if original else "")
            rows["data"].append(original.data if original else b"")
            rows["error"].append(error)
            rows["vector"].append(np.zeros(0, np.float32) if vector is None
                                  else vector.astype(np.float32))

        for source, exc in read.failed:
            row(source, "failed", error=str(exc))
        for source in read.skipped:
            row(source, "known")
        for source in read.duplicates:
            row(source, "duplicate")
        for source, original, vector, score in zip(read.sources, read.originals, vectors, scores):
            row(source, "new", original, vector=vector, score=score)
        return rows


def check_address(address: Optional[str], timeout: float = 5.0) -> None:
    """Refuse at once a cluster address nothing answers at (Ray itself retries for minutes).
    Ray must be installed too."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--ray needs Ray: pip install 'siamese-search[ray]'")
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: expected HOST:PORT (e.g. head:6379) or "
                          "ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None


def ingest_on_ray(gallery: Gallery, sources: Sequence[Source], model_dir: str,
                  db_url: Optional[str] = None, address: Optional[str] = None,
                  batch_size: int = BATCH_SIZE, strict: bool = False, progress=None,
                  actors: Optional[int] = None) -> IngestReport:
    """`ingest.ingest` on Ray: on the cluster at `address`, or a local one started (and stopped)
    here. `actors`: embedding actors, each on one CPU (default: one per CPU of the cluster; this
    process, which only writes, mostly waits for them)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'siamese-search[ray]'") from None
    report = IngestReport(files=len(sources))
    start = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    try:
        for name in ("ray", "ray.data"):  # their INFO lines would bury the command's own output
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = actors or max(1, cpus)
        # A block per batch, and at least one per actor, so that every actor has work.
        blocks = min(max(-(-len(sources) // batch_size), actors), len(sources))
        items = ray.data.from_items([{"index": i, "path": s.path} for i, s in enumerate(sources)],
                                    override_num_blocks=blocks)
        # The actor class with its settings built in: constructor arguments would travel through
        # the object store, where Ray warns that a restarted actor may not find them.
        settings = {"model_dir": str(model_dir), "db_url": db_url or sqlite_url(gallery.path)}
        actor = type("ReadAndEmbedHere", (ReadAndEmbed,), {"settings": settings})
        # No restarts: an actor that dies fails the run, and running it again resumes it. (With
        # restarts, Ray warns that the actor's constructor arguments may be gone by then; the
        # only way to say so is the deprecated `ray_remote_args`.)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            embedded = items.map_batches(actor, batch_size=batch_size,
                                         compute=ray.data.ActorPoolStrategy(size=actors),
                                         num_cpus=1, batch_format="numpy", max_restarts=0)
        seen: set[str] = set()
        for batch in embedded.iter_batches(batch_size=batch_size, batch_format="numpy"):
            _add(gallery, sources, batch, report, seen, strict)
            if progress is not None:
                progress.update(len(batch["index"]))
    finally:
        if started_here:
            ray.shutdown()
    report.seconds = time.perf_counter() - start
    return report


def _add(gallery: Gallery, sources: Sequence[Source], batch: dict[str, Any],
         report: IngestReport, seen: set[str], strict: bool) -> None:
    """Add one batch from the actors, counting what `ingest.ingest` counts."""
    new: list[tuple[Source, Original, np.ndarray]] = []
    scores: list[float] = []
    for index, state, sha, data, error, vector, score in zip(
            batch["index"], batch["state"], batch["sha256"], batch["data"], batch["error"],
            batch["vector"], batch["score"]):
        source = sources[int(index)]
        if state == "failed":
            _fail(report, source, BadImageError(str(error)), strict)
        elif state == "known":
            report.skipped += 1
        elif state == "duplicate" or sha in seen or any(sha == o.sha256 for _, o, _ in new):
            report.duplicates += 1
        else:
            new.append((source, Original.decoded_elsewhere(bytes(data), source.path, str(sha)),
                        np.asarray(vector, np.float32)))
            scores.append(float(score))
    if not new:
        return
    scored = np.asarray(scores)
    added = gallery.add_originals([o for _, o, _ in new], [s.label for s, _, _ in new],
                                  [s.metadata for s, _, _ in new],
                                  vectors=np.stack([v for _, _, v in new]),
                                  domain_scores=None if np.isnan(scored).all() else scored)
    seen.update(o.sha256 for _, o, _ in new)
    report.added += sum(added.created)
    report.skipped += len(new) - sum(added.created)
    report.note(added, [s.name for s, _, _ in new])
