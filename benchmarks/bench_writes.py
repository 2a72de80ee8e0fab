"""Write-path benchmark: what one add costs in a large gallery, and what writes cost searches.

A gallery of --size items (real Fashion-MNIST embeddings, beyond 70,000 jittered copies of them as
in the gallery benchmark; each item with its own small stored original) is written straight into
the database and its index snapshot, then opened with the real model. Then:

1. Single adds of new real images through `Gallery.add`, one at a time: latency p50/p99 and bytes
   written per add (this process's writes: SQLite, its log, the index file; and on PostgreSQL
   the server's write-ahead log).
   Baseline, in the same run: the same adds with the whole index file saved after each one, as
   every add did before the change log.
2. Searches (refresh + search of one embedding, as each request does) while the gallery is idle,
   then while another process adds an image every --write-interval seconds: p50/p99, and the
   ratio of the two p99s.

SQLite by default; `--postgres` runs the same on a private PostgreSQL server.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import add_benchmark_arguments
from benchmarks.bench_gallery import gallery_and_queries, real_embeddings
from scripts.gallery_cli import load_embedder, quiet_faiss

CHUNK = 50_000  # rows per bulk insert while building

WRITER = """
import sys, time
from scripts.gallery_cli import quiet_faiss
quiet_faiss()
from encoder import Embedder
from encoder.datasets import load_fashion_mnist
from indexer import Gallery
gallery = Gallery.open(sys.argv[1], Embedder.load(sys.argv[2]), url=sys.argv[3] or None)
images = load_fashion_mnist(sys.argv[4], "train").images
interval, n = float(sys.argv[5]), 0
print("ready", flush=True)
while True:
    image = images[n % len(images)].copy()
    image[0, 0, 0] = (n // len(images) + 101) % 256  # new bytes each time
    gallery.add(image, labels="written")
    n += 1
    time.sleep(interval)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_benchmark_arguments(p)
    p.add_argument("--size", type=int, default=1_000_000, help="gallery size (default: %(default)s)")
    p.add_argument("--index", default="flat", help="index spec (default: %(default)s)")
    p.add_argument("--adds", type=int, default=300, help="single adds to time (default: %(default)s)")
    p.add_argument("--baseline-adds", type=int, default=20,
                   help="single adds with a whole-index save each (default: %(default)s)")
    p.add_argument("--queries", type=int, default=600,
                   help="distinct query vectors, cycled (default: %(default)s)")
    p.add_argument("--search-seconds", type=float, default=15.0,
                   help="seconds of searching per phase (default: %(default)s)")
    p.add_argument("--write-interval", type=float, default=0.05,
                   help="seconds between the other process's adds (default: %(default)s)")
    p.add_argument("--real", type=int, default=70_000,
                   help="real embeddings to build the gallery from (default: %(default)s)")
    p.add_argument("--postgres", action="store_true",
                   help="keep the metadata in a private PostgreSQL server instead of SQLite")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    quiet_faiss()
    from encoder.datasets import load_fashion_mnist

    embedder = load_embedder(args.model)
    cluster = None
    if args.postgres:
        from benchmarks.postgres import PrivateCluster
        cluster = PrivateCluster()
    try:
        with tempfile.TemporaryDirectory(prefix="siamese-writes-") as tmp:
            url = cluster.create_database("bench") if cluster else None
            path = Path(tmp) / "gallery"
            pool = real_embeddings(embedder, args.dataset, args.real)
            vectors, queries = gallery_and_queries(pool, args.size, args.queries, args.seed)
            del pool
            build(path, embedder, url, vectors, args.index)
            del vectors
            images = load_fashion_mnist(args.dataset, "test").images
            rows = measure(path, embedder, url, images, queries, args)
    finally:
        if cluster is not None:
            cluster.remove()
    print(f"\n{args.size:,} items, index {args.index}, metadata on "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}")
    print(f"{'':<40} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'KB written':>11}")
    for name, r in rows.items():
        written = f"{r['kb']:>11,.1f}" if "kb" in r else f"{'':>11}"
        print(f"{name:<40} {r['n']:>7,} {r['p50']:>8.2f} {r['p99']:>8.2f} {written}")
    add, old = rows["add (change log)"], rows["add, index saved each time (before)"]
    idle, busy = rows["search, idle"], rows["search, another process writing"]
    print(f"add p99: {old['p99'] / add['p99']:.1f}x faster; bytes per add: "
          f"{old['kb'] / max(add['kb'], 1e-9):,.0f}x fewer; search p99 while writing: "
          f"{busy['p99'] / idle['p99']:.2f}x idle ({busy['writes']} writes replayed)")
    return 0


def build(path: Path, embedder, url, vectors: np.ndarray, index: str) -> None:
    """The gallery, written in bulk: rows, small unique originals, the index snapshot."""
    from sqlalchemy import insert, update

    from indexer import Gallery
    from indexer.store import GALLERY, IMAGES, ITEMS
    from indexer.vectors import IndexSpec, VectorIndex

    n = len(vectors)
    Gallery.create(path, embedder, index=index, url=url).close()
    from indexer.folder import connect
    store, record = connect(path, url)
    start = time.perf_counter()
    now = dt.datetime.now(dt.timezone.utc)
    with store.write() as conn:
        for first in range(0, n, CHUNK):
            ids = range(first + 1, min(first + CHUNK, n) + 1)
            tokens = [f"bench item {i}".encode() for i in ids]
            hashes = [hashlib.sha256(t).hexdigest() for t in tokens]
            conn.execute(insert(IMAGES), [{"sha256": h, "media_type": "image/png", "data": t}
                                          for h, t in zip(hashes, tokens)])
            conn.execute(insert(ITEMS), [
                {"id": i, "label": f"L{i % 10}", "source": f"bench/{i}.png", "sha256": h,
                 "width": 28, "height": 28, "added": now, "metadata": {},
                 "embedding": vectors[i - 1].astype("<f4").tobytes()}
                for i, h in zip(ids, hashes)])
            done = ids[-1]
            rate = done / (time.perf_counter() - start)
            print(f"building: {done:,}/{n:,} rows, {rate:,.0f}/s, ETA {(n - done) / rate:.0f} s",
                  file=sys.stderr, flush=True)
        conn.execute(update(GALLERY).values(generation=1, next_id=n + 1))
    spec = IndexSpec.parse(index)
    t = time.perf_counter()
    built = VectorIndex.build(spec, embedder.embedding_dim, np.arange(1, n + 1, dtype=np.int64),
                              vectors)
    built.save(path, {"gallery_id": record.gallery_id, "model_id": record.model_id,
                      "generation": 1})
    store.close()
    print(f"building: index {spec} built and saved in {time.perf_counter() - t:.1f} s",
          file=sys.stderr, flush=True)


def written(gallery) -> int:
    """Bytes written so far for the gallery: by this process (/proc/self/io wchar: SQLite, its
    log, the index file), plus PostgreSQL's write-ahead log when the metadata is there (each
    change is written to the WAL first; the table files follow at checkpoints)."""
    with open("/proc/self/io") as f:
        local = next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    store = gallery._store
    if store.engine.dialect.name != "postgresql":
        return local
    with store.engine.connect() as conn:
        wal = conn.exec_driver_sql("select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        return local + int(wal.scalar_one())


def percentiles(times: list[float]) -> dict:
    p50, p99 = np.percentile(np.asarray(times) * 1e3, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "n": len(times)}


def measure(path: Path, embedder, url, images: np.ndarray, queries: np.ndarray, args) -> dict:
    from indexer import Gallery

    rows = {}
    gallery = Gallery.open(path, embedder, url=url)
    fresh = iter(range(len(images)))

    def new_image() -> np.ndarray:
        image = images[next(fresh)].copy()
        image[0, 0, 0] = 7  # bytes not in the gallery
        return image

    for _ in range(5):
        gallery.add(new_image())  # warm up (TensorFlow's first calls)
    for name, count, save_each in [("add (change log)", args.adds, False),
                                   ("add, index saved each time (before)", args.baseline_adds, True)]:
        times, before = [], written(gallery)
        for _ in range(count):
            image = new_image()
            start = time.perf_counter()
            gallery.add(image)
            if save_each:
                with gallery.writing():
                    gallery._replica.save()
            times.append(time.perf_counter() - start)
        rows[name] = {**percentiles(times), "kb": (written(gallery) - before) / count / 1e3}
        print(f"measured: {name}", file=sys.stderr, flush=True)

    def searches(seconds: float) -> list[float]:
        times = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            q = queries[len(times) % len(queries)]
            start = time.perf_counter()
            gallery.refresh()
            gallery.search_vectors(q[None], k=10)
            times.append(time.perf_counter() - start)
        return times

    searches(1.0)  # warm up
    rows["search, idle"] = percentiles(searches(args.search_seconds))
    generation = gallery.stats().generation
    # The writer on one thread: on a 2-core machine TensorFlow's thread pools would otherwise
    # take the searcher's core, which measures the machine, not the gallery.
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), args.model, url or "",
                               args.dataset, str(args.write_interval)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        rows["search, another process writing"] = percentiles(searches(args.search_seconds))
    finally:
        writer.kill()
        writer.wait()
    gallery.refresh()
    rows["search, another process writing"]["writes"] = gallery.stats().generation - generation
    gallery.close()
    return rows
