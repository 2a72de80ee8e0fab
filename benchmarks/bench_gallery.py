"""Gallery benchmark: ingestion throughput, and single-query search latency and recall@10.

1. Ingestion: a folder of Fashion-MNIST PNGs (written from the test split, or --folder) indexed
   end to end (read, hash, decode, embed, store, index) with the code siamese-index runs; then the
   same folder again, which must add nothing.
2. Search: for each gallery size, each index kind and NumPy brute force (the baseline), p50/p95/p99
   latency of single queries (k=10) and recall@10 against exact search. Vectors are real
   embeddings of the 70,000 Fashion-MNIST images; beyond that, synthetic: copies of real ones
   jittered by Gaussian noise about one nearest-neighbour distance long. Queries are further
   jittered copies (a new photo of a known item), not gallery vectors. With `--vectors distinct`,
   the vectors beyond the real ones are instead the encoder's outputs for distinct images: each a
   Fashion-MNIST or Omniglot image under its own random affine distortion (rotation, shear, scale,
   shift; `encoder.augment`), and queries are further distorted images. This costs an embedding
   per vector (about 30 minutes for 10M on 2 cores), so `--cache DIR` keeps them for the next run.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np

from benchmarks import add_benchmark_arguments
from scripts.common import OMNIGLOT_BACKGROUND
from scripts.gallery_cli import load_embedder, quiet_faiss

DEFAULT_INDEXES = ["flat", "hnsw:ef_search=32", "hnsw", "ivf:nprobe=8", "ivf"]
K = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_benchmark_arguments(p)
    p.add_argument("--folder", metavar="DIR",
                   help="ingest this folder of images instead of writing Fashion-MNIST PNGs")
    p.add_argument("--images", type=int, default=10_000,
                   help="PNGs to write and ingest (default: %(default)s; at most 280,000: past "
                        "Fashion-MNIST's 70,000, the same images turned by 90, 180, 270 degrees)")
    p.add_argument("--sizes", default="10000,100000",
                   help="gallery sizes for search, comma-separated (default: %(default)s; "
                        "e.g. 10000,100000,1000000)")
    p.add_argument("--index", action="append", metavar="SPEC",
                   help="index to measure, repeatable (default: " + "; ".join(DEFAULT_INDEXES) + ")")
    p.add_argument("--queries", type=int, default=1000,
                   help="single queries per case, fewer if --seconds runs out (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="time budget for one case's latency loop (default: %(default)s)")
    p.add_argument("--real", type=int, default=70_000,
                   help="real Fashion-MNIST embeddings to build galleries from; larger galleries "
                        "add jittered copies (default: %(default)s, all of them)")
    p.add_argument("--vectors", choices=("jittered", "distinct"), default="jittered",
                   help="beyond the real embeddings: jittered copies of them, or embeddings of "
                        "distinct distorted Fashion-MNIST and Omniglot images (default: %(default)s)")
    p.add_argument("--omniglot", nargs="*", default=OMNIGLOT_BACKGROUND, metavar="ZIP",
                   help="Omniglot sources among the images to distort (default: %(default)s)")
    p.add_argument("--cache", metavar="DIR",
                   help="--vectors distinct: keep the embeddings in this folder and reuse them")
    p.add_argument("--skip-ingest", action="store_true", help="measure search only")
    p.add_argument("--ray", action="store_true",
                   help="also ingest on a local Ray cluster (siamese-index --ray), compared with "
                        "the single-process rate")
    p.add_argument("--skip-search", action="store_true", help="measure ingestion only")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    quiet_faiss()
    from encoder.errors import ConfigError
    from indexer.vectors import IndexSpec

    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated integers, not {args.sizes!r}") from None
    if not sizes or min(sizes) < 100:
        raise ConfigError(f"--sizes must be at least 100 each, not {args.sizes!r}")
    if args.folder is None and not 1 <= args.images <= 280_000:
        raise ConfigError(f"--images must be in 1..280,000, not {args.images:,}")
    specs = [IndexSpec.parse(s) for s in (args.index or DEFAULT_INDEXES)]
    embedder = load_embedder(args.model)
    results: dict = {"cpus": os.cpu_count(), "model_id": embedder.model_id}
    if not args.skip_ingest:
        results["ingest"] = bench_ingest(embedder, args)
        _say(format_ingest(results["ingest"]), args)
    if not args.skip_search:
        pool = real_embeddings(embedder, args.dataset, args.real)
        results["search"] = []
        _say(format_header(), args)
        for size in sizes:
            if args.vectors == "distinct":
                x, q = distinct_gallery_and_queries(embedder, pool, size, args)
            else:
                x, q = gallery_and_queries(pool, size, args.queries, args.seed)
            for row in bench_search(x, q, specs, args):
                results["search"].append(row)
                _say(format_row(row), args)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _say(line: str, args) -> None:
    print(line, file=sys.stderr if args.json else sys.stdout, flush=True)


# --- ingestion ---------------------------------------------------------------------------------

def bench_ingest(embedder, args) -> dict:
    from indexer import Gallery
    from indexer.ingest import folder_sources, ingest

    with tempfile.TemporaryDirectory(prefix="siamese-bench-") as tmp:
        folder = Path(args.folder) if args.folder else write_pngs(Path(tmp) / "png", args)
        sources, _ = folder_sources(folder)
        start = time.perf_counter()
        gallery = Gallery.create(Path(tmp) / "gallery", embedder)
        first = ingest(gallery, sources)
        gallery.close()
        first_total = time.perf_counter() - start
        start = time.perf_counter()
        gallery = Gallery.open(Path(tmp) / "gallery", embedder)
        again = ingest(gallery, sources)
        gallery.close()
        again_total = time.perf_counter() - start
        ray = {}
        if args.ray:
            from indexer.ray_ingest import ingest_on_ray

            start = time.perf_counter()
            gallery = Gallery.create(Path(tmp) / "ray-gallery", embedder)
            batches = FirstBatch()
            on_ray = ingest_on_ray(gallery, sources, args.model, progress=batches)
            same = hashes(gallery)
            gallery.close()
            ray_total = time.perf_counter() - start
            gallery = Gallery.open(Path(tmp) / "gallery", embedder)
            ref = hashes(gallery)
            gallery.close()
            steady = (len(sources) - batches.first_n) / (batches.last - batches.first)
            ray = {"ray_added": on_ray.added, "ray_seconds": round(ray_total, 2),
                   "ray_images_per_s": round(on_ray.added / ray_total, 1),
                   "ray_vs_one_process": round(first_total / ray_total, 3),
                   "ray_start_s": round(batches.first - start, 2),
                   "ray_steady_images_per_s": round(steady, 1),
                   "ray_steady_vs_one_process": round(steady / (first.added / first_total), 3),
                   "ray_same_gallery": same == ref}
    return {"images": len(sources), "added": first.added, "failed": len(first.failed),
            "seconds": round(first_total, 2), "images_per_s": round(first.added / first_total, 1),
            "again_added": again.added, "again_seconds": round(again_total, 2),
            "again_fraction": round(again_total / first_total, 3), **ray}


class FirstBatch:
    """A progress sink that notes when the first batch arrived and when the last did."""

    def __init__(self):
        self.first = self.last = None
        self.first_n = 0

    def update(self, n: int) -> None:
        self.last = time.perf_counter()
        if self.first is None:
            self.first, self.first_n = self.last, n


def hashes(gallery) -> list[str]:
    found, offset = [], 0
    while page := gallery.items(offset=offset, limit=10_000):
        found += [i.sha256 for i in page]
        offset += len(page)
    return sorted(found)


def write_pngs(folder: Path, args) -> Path:
    from PIL import Image

    from encoder.datasets import load_fashion_mnist

    written = 0
    # The test split's 10,000 first, then the training split's; past all 70,000, the same images
    # turned by 90, 180 and 270 degrees (distinct files, so a large folder has no duplicates).
    splits = {split: load_fashion_mnist(args.dataset, split) for split in ("test", "train")}
    for turns in range(4):
        for split, ds in splits.items():
            for i in range(min(args.images - written, len(ds))):
                name = f"{split}-{i:05d}" + (f"-r{90 * turns}" if turns else "") + ".png"
                path = folder / ds.class_names[ds.labels[i]].replace("/", "-") / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.rot90(ds.images[i, :, :, 0], turns), "L").save(path)
            written += min(args.images - written, len(ds))
    return folder


def format_ingest(r: dict) -> str:
    ray = ""
    if "ray_seconds" in r:
        ray = (f"on Ray (a local cluster): {r['ray_added']:,} added in {r['ray_seconds']:.2f} s "
               f"= {r['ray_images_per_s']:,.0f} images/s end to end, "
               f"{r['ray_vs_one_process']:.2f}x the single-process rate; {r['ray_start_s']:.1f} s "
               f"to start the cluster and its actors, then {r['ray_steady_images_per_s']:,.0f} "
               f"images/s, {r['ray_steady_vs_one_process']:.2f}x the single-process rate; same "
               f"gallery: {'yes' if r['ray_same_gallery'] else 'NO'}\n")
    return ray + (f"ingest: {r['added']:,} of {r['images']:,} PNGs in {r['seconds']:.2f} s = "
            f"{r['images_per_s']:,.0f} images/s end to end (decode, embed, store, index); "
            f"again: {r['again_added']} added in {r['again_seconds']:.2f} s "
            f"({100 * r['again_fraction']:.0f}% of the first run)")


def format_header() -> str:
    return (f"{'size':>9}  {'index':<44} {'build s':>8} {'MiB':>7} {'recall@10':>9} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'queries':>7}  speed-up (numpy p50 / p50)")


# --- search ------------------------------------------------------------------------------------

def real_embeddings(embedder, dataset: str, n: int) -> np.ndarray:
    from encoder.datasets import load_fashion_mnist

    images = np.concatenate([load_fashion_mnist(dataset, s).images for s in ("test", "train")])
    return embedder.embed(images[:n])


def gallery_and_queries(pool: np.ndarray, size: int, queries: int, seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    rng = np.random.default_rng(seed)
    sample = pool[rng.choice(len(pool), min(2000, len(pool)), replace=False)]
    nn = np.sqrt(faiss.knn(sample, pool, 2)[0][:, 1])
    sigma = float(np.median(nn)) / np.sqrt(pool.shape[1])  # noise ~ one NN distance long

    def jittered(n: int) -> np.ndarray:
        base = pool[rng.integers(0, len(pool), n)]
        return (base + rng.normal(0.0, sigma, base.shape)).astype(np.float32)

    if size <= len(pool):
        x = pool[rng.permutation(len(pool))[:size]]
    else:
        x = np.concatenate([pool, jittered(size - len(pool))])
    return np.ascontiguousarray(x), jittered(queries)


def distorted_images(embedder, args) -> Iterator[np.ndarray]:
    """Endless batches of distinct images: Fashion-MNIST and Omniglot images (at the model's input
    size) each under its own random affine distortion, the same that training uses."""
    from encoder.augment import Augmenter
    from encoder.datasets import load_fashion_mnist, load_omniglot

    pre = embedder.card.preprocessing
    bases = [embedder.prepare(np.concatenate([load_fashion_mnist(args.dataset, s).images
                                              for s in ("test", "train")]))]
    if args.omniglot:
        bases.append(load_omniglot(args.omniglot, pre=pre).images)
    base = np.concatenate(bases)
    rng = np.random.default_rng(args.seed)
    distort = Augmenter("affine", args.seed)
    while True:
        yield distort(base[rng.integers(0, len(base), 8192)]).numpy()


def distinct_gallery_and_queries(embedder, pool: np.ndarray, size: int, args
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """The real embeddings, then embeddings of distinct distorted images up to `size`; queries are
    further distorted images. Cached as one .npy per model and seed, grown as needed: its first
    --queries rows are the queries, so a larger gallery extends a smaller one."""
    need = max(size - len(pool), 0) + args.queries
    cache = Path(args.cache) / f"distinct-{embedder.model_id}-seed{args.seed}.npy" \
        if args.cache else None
    have = np.load(cache, mmap_mode="r") if cache and cache.exists() else \
        np.empty((0, pool.shape[1]), np.float32)
    if len(have) < need:
        made = [np.asarray(have)]
        done, start = len(have), time.perf_counter()
        said = start
        for batch in distorted_images(embedder, args):
            made.append(embedder.embed_prepared(batch[:need - done]))
            done += len(made[-1])
            now = time.perf_counter()
            if now - said > 30 or done >= need:
                rate, said = (done - len(have)) / (now - start), now
                _say(f"embedding distinct images: {done:,}/{need:,} ({rate:,.0f}/s, "
                     f"ETA {(need - done) / rate / 60:.0f} min)", args)
            if done >= need:
                break
        have = np.concatenate(made)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache.with_suffix(".tmp.npy"), have)
            os.replace(cache.with_suffix(".tmp.npy"), cache)
    x = np.concatenate([pool[:size], have[args.queries:need]])
    return np.ascontiguousarray(x), np.ascontiguousarray(have[:args.queries])


def bench_search(x: np.ndarray, q: np.ndarray, specs, args) -> Iterator[dict]:
    """One row per index, as each is measured: NumPy brute force first, then `specs`."""
    import faiss
    from threadpoolctl import threadpool_limits

    from indexer.vectors import IndexSpec, VectorIndex

    size = len(x)
    truth = faiss.knn(q, x, K)[1]
    ids = np.arange(1, size + 1, dtype=np.int64)  # gallery ids start at 1, as in a real gallery
    norms = np.einsum("ij,ij->i", x, x)

    def numpy_search(query: np.ndarray) -> np.ndarray:
        d = norms - 2.0 * (x @ query)
        top = np.argpartition(d, K)[:K]
        return top[np.argsort(d[top])]

    with threadpool_limits(1, user_api="blas"):  # one thread, as FAISS uses for one query
        found = np.stack([numpy_search(v) for v in q[:200]])
        row = {"size": size, "index": "numpy brute force", "build_s": 0.0,
               "mib": round(x.nbytes / 2**20, 1), "recall_at_10": _recall(found, truth[:200]),
               **_latency(numpy_search, q, args)}
    yield row
    baseline = row["p50_ms"]
    # Specs that differ only in search parameters share one build: those are set per call.
    builds: dict[IndexSpec, list[IndexSpec]] = {}
    for spec in specs:
        builds.setdefault(replace(spec, ef_search=IndexSpec.ef_search, nprobe=IndexSpec.nprobe),
                          []).append(spec)
    for build_spec, group in builds.items():
        before = _rss()
        start = time.perf_counter()
        index = VectorIndex.build(build_spec, x.shape[1], ids, x, measure=False)
        build = time.perf_counter() - start
        mib = (_rss() - before) / 2**20
        for spec in group:
            params = {"ef_search": spec.ef_search, "nprobe": spec.nprobe}
            found = np.concatenate([index.search(q[i:i + 100], K, **params)[1]
                                    for i in range(0, len(q), 100)]) - 1
            row = {"size": size, "index": index.describe().replace(str(build_spec), str(spec), 1),
                   "build_s": round(build, 1),
                   "mib": round(mib, 1), "recall_at_10": _recall(found, truth),
                   **_latency(lambda v: index.search(v[None], K, **params), q, args)}
            row["vs_numpy"] = round(baseline / row["p50_ms"], 1)
            yield row
        index = found = None  # frees this build before the next is measured


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])), 4)


def _latency(search, q: np.ndarray, args) -> dict:
    for v in q[:5]:
        search(v)  # warm up
    times = []
    deadline = time.perf_counter() + args.seconds
    for v in q:
        start = time.perf_counter()
        search(v)
        times.append(time.perf_counter() - start)
        if len(times) >= 50 and start > deadline:
            break
    p50, p95, p99 = np.percentile(np.asarray(times) * 1e3, [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3), "queries": len(times)}


def _rss() -> int:
    """Resident memory, after handing freed heap back to the system (so deltas mean something)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def format_row(r: dict) -> str:
    ratio = f"{r['vs_numpy']:,.1f}x" if "vs_numpy" in r else "baseline"
    return (f"{r['size']:>9,}  {r['index'][:44]:<44} {r['build_s']:>8.1f} {r['mib']:>7.1f} "
            f"{r['recall_at_10']:>9.3f} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['queries']:>7}  {ratio}")
