"""Many servers on one PostgreSQL gallery: 3 siamese-serve processes, each with its own folder
(index, lock), sharing nothing but a private PostgreSQL server; 16 clients for 60 s, 10% of the
requests writes (adds of new images, and deletes of the clients' own earlier adds), the rest
searches, each to a server picked at random.

Measured: errors (any 5xx, connection failure or unexpected status), search and write latency
p50/p99, and for every fifth write how long until each other server shows it (a watcher per server
polls it),
and the final item count on every server against the database's. Baseline, in the same run: the
same load on one server over the same database.
"""
from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import add_benchmark_arguments
from benchmarks.bench_web import build_gallery, free_port, multipart, query_images, start
from benchmarks.postgres import PrivateCluster

SAMPLE = 5  # every 5th write is watched on the other servers


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_benchmark_arguments(p)
    p.add_argument("--servers", type=int, default=3, help="servers (default: %(default)s)")
    p.add_argument("--clients", type=int, default=16, help="client threads (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=60, help="per phase (default: %(default)s)")
    p.add_argument("--writes", type=float, default=0.1,
                   help="share of requests that write (default: %(default)s)")
    p.add_argument("--size", type=int, default=3000, help="gallery size (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="gunicorn workers per server "
                   "(default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    queries = query_images(args.dataset, 256)
    new_images = fresh_images(args.dataset, 20_000)
    results = {}
    with PrivateCluster() as cluster, tempfile.TemporaryDirectory(prefix="siamese-servers-") as tmp:
        root = Path(tmp)
        url = cluster.create_database("template")
        build_gallery(root / "template" / "gallery", args.model, args.dataset, args.size, url)
        for phase, n in (("1 server (baseline)", 1), (f"{args.servers} servers", args.servers)):
            database = f"phase{n}"
            phase_url = cluster.create_database(database, template="template")
            servers = []
            try:
                for i in range(n):
                    folder = root / database / f"host-{i + 1}"
                    folder.mkdir(parents=True)
                    if i == 0:  # the first host has the built folder; the others start with none
                        shutil.copytree(root / "template" / "gallery", folder / "gallery")
                    port = free_port()
                    command = [sys.executable, "-m", "scripts.serve", "--gallery",
                               str(folder / "gallery"), "--db-url", phase_url, "--model",
                               args.model, "--port", str(port), "--workers", str(args.workers)]
                    servers.append(start(f"host-{i + 1}", command, {}, port, folder / "serve.log",
                                         args.workers, "ready: gallery of"))
                print(f"{phase}: running {args.clients} clients for {args.seconds:g} s",
                      file=sys.stderr, flush=True)
                results[phase] = load(servers, queries, new_images, args)
                results[phase]["final"] = final_counts(servers, cluster, database)
            finally:
                for server in servers:
                    server.stop()
    print(f"\n{args.clients} clients, {args.seconds:g} s, {args.writes:.0%} writes, "
          f"gallery of {args.size:,}, PostgreSQL")
    print(f"{'':<22} {'requests':>8} {'errors':>6} {'req/s':>7} {'search p50':>10} "
          f"{'search p99':>10} {'write p99':>9} {'seen p99 ms':>11} {'seen max ms':>11}  counts")
    for phase, r in results.items():
        print(f"{phase:<22} {r['requests']:>8,} {r['errors']:>6} {r['rate']:>7.1f} "
              f"{r['search_p50']:>10.1f} {r['search_p99']:>10.1f} {r['write_p99']:>9.1f} "
              f"{r['seen_p99']:>11.1f} {r['seen_max']:>11.1f}  {r['final']}")
    base, many = results["1 server (baseline)"], results[f"{args.servers} servers"]
    print(f"{args.servers} servers: {many['rate'] / base['rate']:.2f}x the requests per second of "
          f"one, search p99 {many['search_p99'] / base['search_p99']:.2f}x; every write seen "
          f"everywhere within {many['seen_max']:.0f} ms")
    if many["error_samples"] or base["error_samples"]:
        print("errors:", json.dumps(base["error_samples"] + many["error_samples"])[:2000])
    return 0


def fresh_images(dataset: str, n: int) -> list[bytes]:
    """PNGs of training images with one pixel changed: never in the gallery, all different."""
    from PIL import Image

    from encoder.datasets import load_fashion_mnist

    images = load_fashion_mnist(dataset, "train").images
    out = []
    for i in range(n):
        pixels = images[i % len(images), :, :, 0].copy()
        pixels[0, 0] = 200 + i // len(images)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


class Client:
    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, fields=None, files=None) -> tuple[int, bytes]:
        body, headers = None, {}
        if files is not None:
            body, content_type = multipart(fields or {}, files)
            headers["Content-Type"] = content_type
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            return 0, str(exc).encode()


def load(servers, queries: list[bytes], new_images: list[bytes], args) -> dict:
    stop_at = time.monotonic() + args.seconds
    lock = threading.Lock()
    images = iter(new_images)
    stats = {"search": [], "write": [], "seen": [], "errors": 0, "error_samples": [],
             "requests": 0}
    # Every SAMPLE-th write is watched: each other server is polled until it shows it.
    queues = [queue.Queue() for _ in servers]
    written = itertools.count()

    def error(what: str) -> None:
        with lock:
            stats["errors"] += 1
            if len(stats["error_samples"]) < 10:
                stats["error_samples"].append(what)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        clients = [Client(s.port) for s in servers]
        mine: list[int] = []
        while time.monotonic() < stop_at:
            origin = rng.randrange(len(servers))
            c = clients[origin]
            start_t = time.perf_counter()
            if rng.random() < args.writes:
                if mine and rng.random() < 0.3:
                    item = mine.pop(rng.randrange(len(mine)))
                    status, body = c.call("DELETE", f"/api/gallery/{item}")
                    ok, kind = status == 204, "delete"
                else:
                    with lock:
                        data = next(images)
                    status, body = c.call("POST", "/api/gallery", {"label": "load"},
                                          {"image": ("new.png", data)})
                    ok, kind = status == 201, "add"
                    if ok:
                        item = json.loads(body)["item"]["id"]
                        mine.append(item)
                elapsed = time.perf_counter() - start_t
                if ok:
                    now = time.monotonic()
                    with lock:
                        stats["write"].append(elapsed)
                    if next(written) % SAMPLE == 0:
                        for other in range(len(servers)):
                            if other != origin:
                                queues[other].put((now, item, kind, origin))
            else:
                status, body = c.call("POST", "/api/search", {"k": "5"},
                                      {"image": ("q.png", rng.choice(queries))})
                ok = status == 200
                if ok:
                    with lock:
                        stats["search"].append(time.perf_counter() - start_t)
            with lock:
                stats["requests"] += 1
            if not ok:
                error(f"{status} {body[:200]!r}")

    def watcher(server: int) -> None:
        """Polls one server for each sampled write made through another, until it shows it."""
        c = Client(servers[server].port)
        while True:
            committed, item, kind, origin = queues[server].get()
            if item is None:
                return
            want = 200 if kind == "add" else 404
            while time.monotonic() - committed < 30:
                status, _ = c.call("GET", f"/api/gallery/{item}")
                if status == 0:
                    status, _ = c.call("GET", f"/api/gallery/{item}")  # a closed keep-alive
                if status == want:
                    break
                if status not in (200, 404):
                    error(f"watcher: {status}")
                    break
                time.sleep(0.005)
            with lock:
                stats["seen"].append(time.monotonic() - committed)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    watchers = [threading.Thread(target=watcher, args=(i,)) for i in range(len(servers))]
    for t in threads + watchers:
        t.start()
    for t in threads:
        t.join()
    for q in queues:
        q.put((0.0, None, "", 0))
    for t in watchers:
        t.join()

    def ms(values, q):
        return float(np.percentile(np.asarray(values) * 1e3, q)) if values else float("nan")

    return {"requests": stats["requests"], "errors": stats["errors"],
            "error_samples": stats["error_samples"], "rate": stats["requests"] / args.seconds,
            "search_p50": ms(stats["search"], 50), "search_p99": ms(stats["search"], 99),
            "write_p99": ms(stats["write"], 99), "seen_p99": ms(stats["seen"], 99),
            "seen_max": ms(stats["seen"], 100), "writes": len(stats["write"])}


def final_counts(servers, cluster: PrivateCluster, database: str) -> str:
    import sqlalchemy

    counts = []
    for s in servers:
        status, body = Client(s.port).call("GET", "/healthz")
        counts.append(json.loads(body)["items"] if status == 200 else f"status {status}")
    engine = sqlalchemy.create_engine(cluster.url(database))
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("select count(*) from items").scalar_one()
    engine.dispose()
    same = "identical" if set(counts) == {stored} else "DIFFER"
    return f"{'/'.join(map(str, counts))} (database {stored}: {same})"
