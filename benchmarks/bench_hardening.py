"""Hardening benchmark: what hostile clients cost everyone else, on a real siamese-serve (2
workers, each running --threads requests at once: the service's default 2) over a gallery of
--size sample images.

1. Worst-case images: 8 clients each sending, again and again, a 6300x6300 16-bit PNG (77 KB,
   under the 40 MP limit; decoding it naively took 760 MB and 1.5 s). Measured: a normal search's
   latency p50/p99 meanwhile, against the same searches with no such clients, and the server's
   memory (RSS of all its processes) before and at the end.
2. Slow clients: --slow connections each trickling a request body a byte every 0.2 s, and as
   many sending their request's headers a line a second. Measured: `/healthz` probes answered
   (within 5 s; the target is 95% within 2 s) and their latency, against the same probes with no
   slow clients.

Each phase prints its ratio to its baseline, measured in the same run.
"""
from __future__ import annotations

import argparse
import http.client
import io
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import add_benchmark_arguments
from benchmarks.bench_web import build_gallery, free_port, multipart, query_images, start


def add_arguments(p: argparse.ArgumentParser) -> None:
    from webapp.settings import Settings

    add_benchmark_arguments(p)
    p.add_argument("--size", type=int, default=1000, help="gallery size (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=20, help="per phase (default: %(default)s)")
    p.add_argument("--hostile", type=int, default=8,
                   help="worst-case image clients (default: %(default)s)")
    p.add_argument("--threads", type=int, default=Settings().threads,
                   help="requests a worker runs at once (default: the service's, %(default)s)")
    p.add_argument("--slow", type=int, default=64,
                   help="slow-body clients, and as many slow-header ones (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    queries = query_images(args.dataset, 64)
    worst = worst_case_png()
    with tempfile.TemporaryDirectory(prefix="siamese-hardening-") as tmp:
        root = Path(tmp)
        gallery = build_gallery(root / "gallery", args.model, args.dataset, args.size)
        port = free_port()
        server = start("ours", [sys.executable, "-m", "scripts.serve", "--gallery", str(gallery),
                                "--model", args.model, "--port", str(port), "--workers", "2",
                                "--threads", str(args.threads)], {}, port, root / "serve.log", 2,
                       "ready: gallery of")
        try:
            rows = {}
            rss_idle, workers_idle = rss(server.process.pid), worker_rss(server.process.pid)
            rows["search, alone"] = searches(port, queries, args.seconds)
            with background(args.hostile, lambda stop: hostile_client(port, worst, stop)) as sent:
                rows[f"search, {args.hostile} clients sending worst-case images"] = searches(
                    port, queries, args.seconds)
                rss_busy, workers_busy = rss(server.process.pid), worker_rss(server.process.pid)
            rows["healthz, alone"] = probes(port, args.seconds)
            with background(args.slow, lambda stop: slow_client(port, stop)), \
                    background(args.slow, lambda stop: slow_header_client(port, stop)):
                rows[f"healthz, {args.slow} slow clients"] = probes(port, args.seconds)
        finally:
            server.stop()
    print(f"\n2 workers, each running {args.threads} requests at once")
    print(f"{'':<52} {'answered':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in rows.items():
        print(f"{name:<52} {r['answered']:>9.1%} {r['p50']:>8.1f} {r['p99']:>8.1f}")
    alone, busy = rows["search, alone"], rows[f"search, {args.hostile} clients sending worst-case images"]
    h_alone, h_slow = rows["healthz, alone"], rows[f"healthz, {args.slow} slow clients"]
    print(f"worst-case images ({sum(sent)} sent): search p99 {busy['p99'] / alone['p99']:.1f}x "
          f"alone ({busy['p99']:.0f} ms); server memory {rss_idle / 1e6:,.0f} MB idle, "
          f"{rss_busy / 1e6:,.0f} MB under them; per worker "
          + ", ".join(f"{a / 1e6:,.0f} -> {b / 1e6:,.0f} MB"
                      for a, b in zip(sorted(workers_idle), sorted(workers_busy))))
    print(f"slow clients: {h_slow['answered']:.0%} of health probes answered "
          f"({h_alone['answered']:.0%} alone), p99 {h_slow['p99'] / h_alone['p99']:.1f}x alone")
    return 0


def worst_case_png() -> bytes:
    from PIL import Image

    pixels = np.zeros((6300, 6300), np.uint16)
    pixels[::7, ::3] = 60000
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def rss(pid: int) -> int:
    """Resident memory of a process and its children (gunicorn's master and workers)."""
    return sum(worker_rss(pid)) + _rss(["-p", str(pid)])[0]


def worker_rss(pid: int) -> list[int]:
    """Resident memory of each child (gunicorn's workers) of a process."""
    return _rss(["--ppid", str(pid)])


def _rss(select: list[str]) -> list[int]:
    import subprocess

    out = subprocess.run(["ps", "-o", "rss=", *select], capture_output=True, text=True).stdout
    return [int(v) * 1024 for v in out.split()]


class background:
    """`n` threads running `work(stop_event)` for the duration of the `with`; yields a list
    where each thread may count what it did."""

    def __init__(self, n: int, work):
        self.stop = threading.Event()
        self.counts = [0] * n
        self.threads = [threading.Thread(target=self._run, args=(i, work)) for i in range(n)]

    def _run(self, i: int, work) -> None:
        self.counts[i] = work(self.stop)

    def __enter__(self) -> list[int]:
        for t in self.threads:
            t.start()
        time.sleep(2.0)  # under way before the measurement starts
        return self.counts

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def hostile_client(port: int, data: bytes, stop: threading.Event) -> int:
    body, content_type = multipart({}, {"image": ("big.png", data)})
    sent = 0
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/api/search", body=body, headers={"Content-Type": content_type})
            conn.getresponse().read()
            conn.close()
            sent += 1
        except OSError:
            time.sleep(0.1)
    return sent


def slow_client(port: int, stop: threading.Event) -> int:
    body, content_type = multipart({}, {"image": ("a.png", b"\x89PNG" + b"\0" * 4000)})
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode())
            for byte in body:
                if stop.is_set():
                    break
                s.send(bytes([byte]))
                time.sleep(0.2)
            s.close()
        except OSError:
            time.sleep(0.1)
    return 0


def slow_header_client(port: int, stop: threading.Event) -> int:
    """A request whose headers come a line a second, for as long as the phase lasts."""
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            n = 0
            while not stop.wait(1.0):
                s.sendall(f"X-Slow-{n}: {n}\r\n".encode())
                n += 1
            s.close()
        except OSError:
            time.sleep(0.1)
    return 0


def searches(port: int, queries: list[bytes], seconds: float) -> dict:
    times, answered, sent = [], 0, 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        body, content_type = multipart({"k": "5"}, {"image": ("q.png", queries[sent % len(queries)])})
        start_t = time.perf_counter()
        sent += 1
        try:
            conn.request("POST", "/api/search", body=body, headers={"Content-Type": content_type})
            ok = conn.getresponse().read() and True
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ok = False
        if ok:
            answered += 1
            times.append(time.perf_counter() - start_t)
    return summary(times, answered, sent)


def probes(port: int, seconds: float) -> dict:
    times, answered, sent = [], 0, 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        sent += 1
        start_t = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
        except (OSError, http.client.HTTPException):
            ok = False
        if ok:
            answered += 1
            times.append(time.perf_counter() - start_t)
        time.sleep(0.1)
    return summary(times, answered, sent)


def summary(times: list[float], answered: int, sent: int) -> dict:
    p50, p99 = (np.percentile(np.asarray(times) * 1e3, [50, 99]) if times else (np.nan, np.nan))
    return {"answered": answered / max(sent, 1), "p50": float(p50), "p99": float(p99)}
