"""Web benchmark: end-to-end latency and throughput of the JSON API over HTTP.

Two servers over the same 10,000 Fashion-MNIST test images, both under gunicorn with the same
workers and threads, measured in the same run, one after the other at each concurrency:
- ours: `siamese-serve` (Embedder's compiled function, FAISS, SQLite metadata);
- naive: a minimal Flask handler that calls `model.predict` on each upload and scans every
  gallery embedding with NumPy (the same decoding and preprocessing, `encoder.images`).
Rows, by endpoint, at each concurrency:
- search: `POST /api/search`, k=10, both servers (the naive one has nothing else);
- identify: `POST /api/identify`, and verify: `POST /api/verify` (two images), ours only;
- mixed: ours only, each request drawn at random (seeded per client): 30% search, 30% identify,
  30% verify, 10% writes, a client's writes alternating between adding an image
  (`POST /api/gallery`) and deleting the item it added, so the gallery keeps its size (at most
  one item per client is left over when a row ends).
Clients are threads in this process, each with one keep-alive connection, posting PNGs of
Fashion-MNIST *training* images (never in the gallery) as multipart uploads, for a fixed time
after a short warm-up. Every answer is checked: a 2xx status, and the JSON its endpoint answers.
Note the clients share the machine's cores with the servers; they are kept lean (`Connection`:
0.10-0.15 ms of CPU a request, where `http.client` took ~0.24) so that they take little from them.

The ceiling, measured first while no server runs: the model's own batched rate in one process
(`Embedder.embed_and_score_prepared` on batches of 256 prepared images, TensorFlow, all cores).
Each row's req/s is read as a share of it: what HTTP, decoding, searching and one-image calls
leave of what the model alone could do.
"""
from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from benchmarks import add_benchmark_arguments
from scripts.gallery_cli import quiet_faiss

K = 10
REPO = Path(__file__).resolve().parents[1]
ENDPOINTS = ("search", "identify", "verify", "mixed")
MIX = {"search": 0.3, "identify": 0.3, "verify": 0.3, "write": 0.1}  # the mixed row's requests
CEILING_IMAGES, CEILING_BATCH, CEILING_SECONDS = 2048, 256, 3.0
TARGETS = {"p50_ms": 10.0, "p99_ms": 30.0, "speedup": 20.0,
           "busy_clients": 16, "busy_per_s": 1200.0, "single_p50_ms_goal": 2.0,
           "endpoint_ratio": 1.5}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_benchmark_arguments(p)
    p.add_argument("--gallery", metavar="PATH",
                   help="an existing gallery of --size Fashion-MNIST test images made with "
                        "--model; the mixed rows add items to it and delete them, and may leave "
                        "one per client (default: build one in a temporary folder)")
    p.add_argument("--size", type=int, default=10_000,
                   help="gallery size: the first N test images (default: %(default)s)")
    p.add_argument("--clients", default="1,4,16",
                   help="concurrent clients, comma-separated (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="measured seconds per concurrency, ours (default: %(default)s; the "
                        "full run is 60)")
    p.add_argument("--baseline-seconds", type=float, default=10.0,
                   help="measured seconds per concurrency, naive baseline (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="unmeasured seconds before each measurement (default: %(default)s)")
    from webapp.settings import Settings

    served = Settings()
    p.add_argument("--workers", type=int, default=served.workers,
                   help="gunicorn workers, both servers (default: the service's, %(default)s)")
    p.add_argument("--threads", type=int, default=served.threads,
                   help="requests a worker runs at once (threads), both servers (default: the "
                        "service's, %(default)s)")
    p.add_argument("--skip-baseline", action="store_true", help="measure our server only")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS),
                   help="rows to measure at each concurrency, comma-separated, of "
                        f"{', '.join(ENDPOINTS)} (default: %(default)s)")
    p.add_argument("--skip-ceiling", action="store_true",
                   help="do not measure the model's own batched rate in a process of its own")
    p.add_argument("--batch", type=int, default=100, metavar="N",
                   help="also time N single searches, one after another, against one batch "
                        "search of the same N images (POST /api/search/batch); 0: skip "
                        "(default: %(default)s)")
    p.add_argument("--batch-rounds", type=int, default=5,
                   help="rounds of that comparison; the median is shown (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


# --- servers ---------------------------------------------------------------------------------------

def naive_app():
    """The baseline: Flask, `model.predict` per request, a NumPy scan of every embedding.
    Configured by SIAMESE_MODEL, BENCH_DATASET and BENCH_SIZE (gunicorn builds it per worker)."""
    import keras
    from flask import Flask, jsonify, request

    from encoder.artifact import load_card
    from encoder.datasets import load_fashion_mnist
    from encoder.images import decode, prepare_batch

    model_dir = Path(os.environ["SIAMESE_MODEL"])
    card = load_card(model_dir)
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    ds = load_fashion_mnist(os.environ["BENCH_DATASET"], "test")
    size = int(os.environ["BENCH_SIZE"])
    images = prepare_batch(ds.images[:size], card.preprocessing)
    gallery = model.predict(images, batch_size=512, verbose=0)
    labels = [ds.class_names[i] for i in ds.labels[:size]]
    app = Flask("naive")
    print(f"naive worker {os.getpid()} ready", file=sys.stderr, flush=True)

    @app.post("/api/search")
    def search():
        k = int(request.form.get("k", K))
        image = decode(request.files["image"].read(), "image")
        vector = model.predict(prepare_batch([image], card.preprocessing), verbose=0)[0]
        distances = np.sqrt(((gallery - vector) ** 2).sum(axis=1))
        best = np.argsort(distances)[:k]
        return jsonify(model=card.model_id, threshold=card.threshold, matches=[
            {"id": int(i) + 1, "label": labels[i], "distance": float(distances[i]),
             "verified": bool(distances[i] <= card.threshold)} for i in best])

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log: Path

    def stop(self) -> None:
        stop(self.process)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (gunicorn's graceful stop), then SIGKILL if it has not exited in `timeout` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, command: list[str], env: dict, port: int, log: Path, workers: int,
          ready: str) -> Server:
    """Start a server and wait until all its `workers` have logged `ready` (the model loaded)."""
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               env=child_environment(**env), cwd=REPO)
    server = Server(name, process, port, log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} server exited ({process.returncode}):\n"
                               f"{log.read_text()[-3000:]}")
        if log.read_text(errors="replace").count(ready) >= workers and _answers(port):
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{name} server did not start in 300 s:\n{log.read_text()[-3000:]}")


def child_environment(**extra: str) -> dict:
    """This process's environment for a child that imports this repository's packages, with
    TensorFlow's start-up chatter off."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                             environment.get("PYTHONPATH")]))
    return environment


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def start_ours(gallery: Path, model: str, folder: Path, args) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "scripts.serve", "--gallery", str(gallery), "--model", model,
               "--port", str(port), "--workers", str(args.workers), "--threads", str(args.threads)]
    return start("ours", command, {}, port, folder / "ours.log", args.workers, "ready: gallery of")


def start_naive(model: str, folder: Path, args) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
               str(args.workers), "--worker-class", "gthread", "--threads", str(args.threads),
               "--timeout", "300", *_no_control_socket(), "benchmarks.bench_web:naive_app()"]
    env = {"SIAMESE_MODEL": str(Path(model).resolve()),
           "BENCH_DATASET": str(Path(args.dataset).resolve()), "BENCH_SIZE": str(args.size)}
    return start("naive", command, env, port, folder / "naive.log", args.workers, "naive worker")


def _no_control_socket() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable"
                                          for s in KNOWN_SETTINGS) else []


# --- the gallery and the queries ---------------------------------------------------------------

def build_gallery(path: Path, model: str, dataset: str, size: int, url: str = "") -> Path:
    """The first `size` Fashion-MNIST test images, labelled, in a flat gallery (in a child
    process, so this one never loads TensorFlow); its metadata at `url` if given."""
    code = ("import sys\n"
            "from encoder import Embedder\n"
            "from encoder.datasets import load_fashion_mnist\n"
            "from indexer import Gallery\n"
            "path, model, dataset, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])\n"
            "url = sys.argv[5] or None\n"
            "ds = load_fashion_mnist(dataset, 'test')\n"
            "names = [n.replace('/', '-') for n in ds.class_names]\n"
            "with Gallery.create(path, Embedder.load(model), url=url) as g:\n"
            "    for s in range(0, size, 1000):\n"
            "        e = min(size, s + 1000)\n"
            "        g.add(ds.images[s:e], labels=[names[i] for i in ds.labels[s:e]],\n"
            "              sources=[f't10k-{i:05d}' for i in range(s, e)])\n")
    subprocess.run([sys.executable, "-c", code, str(path), model, dataset, str(size), url],
                   check=True, env=child_environment())
    return path


def measure_ceiling(model: str, dataset: str, seconds: float = CEILING_SECONDS) -> float:
    """Images per second of the model alone: `embed_and_score_prepared` (the call every embedding
    path of the service makes) on batches of `CEILING_BATCH` prepared query images, TensorFlow
    on all cores, for `seconds` after a warm-up. In a child process, so this one never loads
    TensorFlow, and before any server starts, so that it has the cores to itself."""
    code = ("import json, sys, time\n"
            "from benchmarks.bench_web import query_images\n"
            "from encoder import Embedder\n"
            "model, dataset, n, size, seconds = (sys.argv[1], sys.argv[2], int(sys.argv[3]),\n"
            "                                   int(sys.argv[4]), float(sys.argv[5]))\n"
            "embedder = Embedder.load(model)\n"
            "prepared = embedder.prepare(query_images(dataset, n))\n"
            "batches = [prepared[s:s + size] for s in range(0, n, size)]\n"
            "for batch in batches[:2]:\n"
            "    embedder.embed_and_score_prepared(batch)  # compiles, fills caches\n"
            "images, start = 0, time.perf_counter()\n"
            "while time.perf_counter() - start < seconds:\n"
            "    batch = batches[images // size % len(batches)]\n"
            "    embedder.embed_and_score_prepared(batch)\n"
            "    images += len(batch)\n"
            "print(json.dumps({'per_s': images / (time.perf_counter() - start)}))\n")
    done = subprocess.run([sys.executable, "-c", code, model, dataset, str(CEILING_IMAGES),
                           str(CEILING_BATCH), str(seconds)],
                          check=True, env=child_environment(), stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["per_s"]


def query_images(dataset: str, n: int = 256) -> list[bytes]:
    """`n` training-set images (never in the gallery) as PNG files."""
    from PIL import Image

    from encoder.datasets import load_fashion_mnist

    ds = load_fashion_mnist(dataset, "train")
    rng = np.random.default_rng(0)
    images = []
    for i in rng.choice(len(ds), n, replace=False):
        png = io.BytesIO()
        Image.fromarray(ds.images[i, :, :, 0], "L").save(png, "PNG")
        images.append(png.getvalue())
    return images


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with a fresh random boundary, as curl and browsers send (the
    server parses each boundary anew, which costs it ~0.3 ms)."""
    boundary = f"----bench{os.urandom(12).hex()}"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                  f"{value}\r\n".encode())
    for name, (filename, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'.encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


# --- load ------------------------------------------------------------------------------------------

Check = Callable[[int, bytes], Optional[str]]  # (2xx status, body) -> what is wrong, or None


@dataclass(frozen=True)
class Call:
    """One request, and how to judge a 2xx answer to it (other statuses are counted apart)."""
    method: str
    path: str
    check: Check
    body: bytes = b""
    content_type: Optional[str] = None


Workload = Callable[[int], Iterator[Call]]  # client number -> that client's endless requests


def search_call(image: bytes) -> Call:
    body, content_type = multipart({"k": str(K)}, {"image": ("query.png", image)})
    return Call("POST", "/api/search", _check_search, body, content_type)


def _check_search(status: int, data: bytes) -> Optional[str]:
    answer = _json(data)
    if not isinstance(answer, dict) or not isinstance(answer.get("matches"), list):
        return "search: answer is not the expected JSON"
    return None if len(answer["matches"]) == K else "search: answer without k matches"


def identify_call(image: bytes) -> Call:
    body, content_type = multipart({}, {"image": ("query.png", image)})
    return Call("POST", "/api/identify", _check_identify, body, content_type)


def _check_identify(status: int, data: bytes) -> Optional[str]:
    """The answer names the nearest item (the gallery is never empty) and the match, if any."""
    answer = _json(data)
    if not isinstance(answer, dict) or not {"model", "match", "nearest"} <= answer.keys():
        return "identify: answer is not the expected JSON"
    return None if isinstance(answer["nearest"], dict) else "identify: answer without nearest"


def verify_call(image_a: bytes, image_b: bytes) -> Call:
    body, content_type = multipart({}, {"image_a": ("a.png", image_a),
                                        "image_b": ("b.png", image_b)})
    return Call("POST", "/api/verify", _check_verify, body, content_type)


def _check_verify(status: int, data: bytes) -> Optional[str]:
    answer = _json(data)
    if not isinstance(answer, dict) or not isinstance(answer.get("verified"), bool) \
            or not isinstance(answer.get("distance"), (int, float)):
        return "verify: answer without a verdict"
    return None


def add_call(image: bytes, label: str, added: list[int]) -> Call:
    """Add `image`; its item's id goes to `added` (for the delete that follows)."""

    def check(status: int, data: bytes) -> Optional[str]:
        answer = _json(data)
        try:
            added.append(int(answer["item"]["id"]))
        except (TypeError, KeyError, ValueError):
            return "add: answer without the item's id"
        return None

    body, content_type = multipart({"label": label}, {"image": ("item.png", image)})
    return Call("POST", "/api/gallery", check, body, content_type)


def delete_call(item_id: int) -> Call:
    return Call("DELETE", f"/api/gallery/{item_id}",
                lambda status, data: None if status == 204 else f"delete: status {status}, not 204")


def _json(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


def workload(endpoint: str, images: list[bytes], clients: int) -> Workload:
    """Each client's requests to `endpoint`: the query images in turn, from its own place."""
    if endpoint == "mixed":
        return lambda client: _mixed(images, client, clients)
    return lambda client: (_read_call(endpoint, images, i) for i in itertools.count(client * 37))


def _read_call(endpoint: str, images: list[bytes], i: int) -> Call:
    image = images[i % len(images)]
    if endpoint == "search":
        return search_call(image)
    if endpoint == "identify":
        return identify_call(image)
    return verify_call(image, images[(i + 1) % len(images)])


def _mixed(images: list[bytes], client: int, clients: int) -> Iterator[Call]:
    """`MIX`, drawn with this client's own seed. A client adds only its own share of the images
    (every `clients`-th), so no two clients hold the same image at once: the gallery keeps one
    copy of an image, and the second adder would be handed the first one's item to delete."""
    rng = random.Random(client)
    kinds, weights = list(MIX), list(MIX.values())
    own = images[client % len(images)::clients]
    added: list[int] = []  # the item this client added and has not deleted yet
    i = writes = client * 37
    while True:
        kind = rng.choices(kinds, weights)[0]
        if kind != "write":
            yield _read_call(kind, images, i)
            i += 1
        elif added:
            yield delete_call(added.pop())
        else:
            yield add_call(own[writes % len(own)], f"bench-{client}", added)
            writes += 1


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # connection errors and malformed answers


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1, as lean as a client can be in Python: a
    request is written in one `sendall`, the answer read by its Content-Length. The clients share
    the machine's two cores with the servers: `http.client` took ~0.24 ms of CPU a request (a
    quarter of a core at 1,000 requests a second, taken from the servers); this takes 0.10-0.15."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""  # bytes received past the last answer

    def request(self, call: Call) -> tuple[int, bytes, bool]:
        """(status, body, whether the server closes the connection)."""
        head = (f"{call.method} {call.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Length: {len(call.body)}\r\n")
        if call.content_type:
            head += f"Content-Type: {call.content_type}\r\n"
        self.sock.sendall(head.encode("latin-1") + b"\r\n" + call.body)
        data = self.pending
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._receive()
        lines = data[:end].split(b"\r\n")
        status, length, close = int(lines[0].split(b" ", 2)[1]), None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise ConnectionError("a chunked answer (this client reads Content-Length only)")
        if length is None and status in (204, 304):
            length = 0  # no body, by definition (RFC 9110)
        elif length is None:
            raise ConnectionError("an answer without a Content-Length")
        data = data[end + 4:]
        while len(data) < length:
            data += self._receive()
        self.pending = data[length:]
        return status, data[:length], close

    def _receive(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def client_loop(port: int, calls: Iterator[Call], start_at: float, measure_from: float,
                stop_at: float, tally: Tally) -> None:
    conn: Optional[Connection] = None
    while time.perf_counter() < start_at:
        time.sleep(0.0005)
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            break
        call = next(calls)
        begin = now
        try:
            if conn is None:
                conn = Connection(port)
            begin = time.perf_counter()
            status, data, close = conn.request(call)
            elapsed = time.perf_counter() - begin
            if close:
                conn.close()
                conn = None
        except (OSError, ValueError, IndexError) as exc:  # refused, reset, a garbled status line
            if begin >= measure_from:
                tally.errors.append(f"{type(exc).__name__}: {exc}")
            if conn is not None:
                conn.close()
            conn = None
            continue
        # Checked in the warm-up too: a write's check keeps the id of the item to delete next.
        wrong = call.check(status, data) if 200 <= status < 300 else None
        if begin < measure_from:
            continue  # warm-up
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        tally.latencies.append(elapsed)
        if wrong:
            tally.errors.append(wrong)
    if conn is not None:
        conn.close()


def measure(server: Server, endpoint: str, requests: Workload, clients: int, seconds: float,
            warmup: float) -> dict:
    tallies = [Tally() for _ in range(clients)]
    start_at = time.perf_counter() + 0.2
    measure_from = start_at + warmup
    stop_at = measure_from + seconds
    threads = [threading.Thread(target=client_loop, daemon=True,
                                args=(server.port, requests(n), start_at, measure_from, stop_at,
                                      tally))
               for n, tally in enumerate(tallies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = np.asarray([x for t in tallies for x in t.latencies]) * 1e3
    statuses: dict[int, int] = {}
    for t in tallies:
        for status, n in t.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    errors = [e for t in tallies for e in t.errors]
    p50, p95, p99 = (np.percentile(latencies, [50, 95, 99]) if len(latencies) else [np.nan] * 3)
    return {"server": server.name, "endpoint": endpoint, "clients": clients, "seconds": seconds,
            "requests": int(len(latencies)), "per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "p99_ms": round(float(p99), 2),
            "statuses": {str(s): n for s, n in sorted(statuses.items())},
            "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
            "status_5xx": sum(n for s, n in statuses.items() if s >= 500),
            "errors": len(errors), "error_examples": sorted(set(errors))[:3]}


# --- the run ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    quiet_faiss()
    from encoder import load_card
    from encoder.errors import ConfigError

    try:
        levels = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--clients must be comma-separated integers, not {args.clients!r}") \
            from None
    if not levels or min(levels) < 1 or args.seconds <= 0 or args.baseline_seconds <= 0:
        raise ConfigError("--clients must be >= 1 each and --seconds, --baseline-seconds > 0")
    if not 100 <= args.size <= 10_000:
        raise ConfigError(f"--size must be in 100..10000 (the test split), not {args.size}")
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    unknown = [e for e in endpoints if e not in ENDPOINTS]
    if not endpoints or unknown:
        raise ConfigError(f"--endpoints must be some of {', '.join(ENDPOINTS)}, not "
                          f"{args.endpoints!r}")
    card = load_card(args.model)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    results: dict = {"cpus": os.cpu_count(), "model_id": card.model_id, "gallery_size": args.size,
                     "workers": args.workers, "threads": args.threads, "ceiling_per_s": None,
                     "rows": []}
    with tempfile.TemporaryDirectory(prefix="siamese-bench-web-") as tmp:
        folder = Path(tmp)
        if args.gallery:
            gallery = Path(args.gallery)
        else:
            say(f"building a gallery of {args.size:,} Fashion-MNIST test images ...")
            started = time.perf_counter()
            gallery = build_gallery(folder / "gallery", args.model, args.dataset, args.size)
            say(f"  built in {time.perf_counter() - started:.1f} s")
        if not args.skip_ceiling:
            say(f"the ceiling: the model alone, batches of {CEILING_BATCH}, in a process of its "
                f"own ...")
            results["ceiling_per_s"] = round(measure_ceiling(args.model, args.dataset), 1)
            say(f"  {results['ceiling_per_s']:,.0f} images/s (Embedder.embed_and_score_prepared, "
                f"TensorFlow, {os.cpu_count()} CPUs)")
        images = query_images(args.dataset)
        servers = [start_ours(gallery, args.model, folder, args)]
        try:
            if not args.skip_baseline and "search" in endpoints:
                servers.append(start_naive(args.model, folder, args))
            say(f"servers: gunicorn, {args.workers} workers x {args.threads} threads each; "
                f"gallery {args.size:,} images; k={K}; {os.cpu_count()} CPUs\n")
            say(HEADER)
            for clients in levels:
                for endpoint in endpoints:
                    for server in servers:
                        if server.name != "ours" and endpoint != "search":
                            continue  # the naive server has only a search
                        seconds = args.seconds if server.name == "ours" else args.baseline_seconds
                        row = measure(server, endpoint, workload(endpoint, images, clients),
                                      clients, seconds, args.warmup)
                        results["rows"].append(row)
                        say(format_row(row))
            if args.batch:
                results["batch"] = measure_batch(servers[0], images, args.batch, args.batch_rounds)
                say(format_batch(results["batch"]))
        finally:
            for server in servers:
                server.stop()
        logs = {s.name: s.log.read_text(errors="replace") for s in servers}
    results["speedups"] = speedups(results["rows"])
    results["targets"] = targets(results)
    for line in summary(results):
        say(line)
    for name, log in logs.items():
        if "Traceback" in log:
            say(f"warning: the {name} server logged a traceback:\n{log[-2000:]}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def measure_batch(server: Server, images: list[bytes], n: int, rounds: int) -> dict:
    """N single searches in a row on one keep-alive connection (the baseline), against one batch
    search of the same N images; each answer checked. Median of `rounds` of each."""
    from encoder.errors import ConfigError

    if not 1 <= n <= 100:
        raise ConfigError(f"--batch must be in 1..100 (the server's batch limit), not {n}")
    queries = [images[i % len(images)] for i in range(n)]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)

    def post(path: str, files: list[tuple[str, bytes]]) -> dict:
        body, content_type = multipart_many({"k": str(K)}, files)
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {answer}")
        return answer

    singles, batches = [], []
    try:
        post("/api/search/batch", [("image", q) for q in queries])  # warm up
        for _ in range(rounds):
            start = time.perf_counter()
            single = [post("/api/search", [("image", q)])["matches"] for q in queries]
            singles.append(time.perf_counter() - start)
            start = time.perf_counter()
            batch = post("/api/search/batch", [("image", q) for q in queries])["results"]
            batches.append(time.perf_counter() - start)
            if [[m["id"] for m in r["matches"]] for r in batch] != \
                    [[m["id"] for m in ms] for ms in single]:
                raise RuntimeError("the batch search answered other matches than single searches")
    finally:
        conn.close()
    single_s, batch_s = float(np.median(singles)), float(np.median(batches))
    return {"images": n, "rounds": rounds, "singles_ms": round(1e3 * single_s, 1),
            "batch_ms": round(1e3 * batch_s, 1), "speedup": round(single_s / batch_s, 2)}


def format_batch(r: dict) -> str:
    return (f"\nbatch search, {r['images']} images (median of {r['rounds']} rounds):\n"
            f"  {r['images']} single requests, one after another  {r['singles_ms']:>9,.1f} ms  "
            f"baseline\n"
            f"  one POST /api/search/batch                {r['batch_ms']:>9,.1f} ms  "
            f"{r['speedup']:.2f}x faster (same matches)")


def multipart_many(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """`multipart` with repeated file fields (a batch's `image` parts)."""
    body, content_type = multipart(fields, {})
    boundary = content_type.split("boundary=")[1]
    out = io.BytesIO(body[:-len(f"--{boundary}--\r\n")])
    for i, (name, data) in enumerate(files):
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="q{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), content_type


HEADER = (f"{'server':<6} {'endpoint':<8} {'clients':>7} {'seconds':>7} {'requests':>9} "
          f"{'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'non-2xx':>7} {'5xx':>5} "
          f"{'errors':>6}")


def format_row(r: dict) -> str:
    return (f"{r['server']:<6} {r['endpoint']:<8} {r['clients']:>7} {r['seconds']:>7.0f} "
            f"{r['requests']:>9,} {r['per_s']:>8,.1f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['non_2xx']:>7} {r['status_5xx']:>5} {r['errors']:>6}")


def find_row(rows: list[dict], endpoint: str, clients: int, server: str = "ours"
             ) -> Optional[dict]:
    return next((r for r in rows if (r["server"], r["endpoint"], r["clients"]) ==
                 (server, endpoint, clients)), None)


def clean(row: dict) -> bool:
    """Every answer a 2xx with the JSON its endpoint answers, and no connection failed."""
    return row["errors"] == 0 and row["non_2xx"] == 0 and row["status_5xx"] == 0


def speedups(rows: list[dict]) -> list[dict]:
    """Ours against the naive server, search at each concurrency."""
    out = []
    for r in rows:
        if (r["server"], r["endpoint"]) != ("ours", "search"):
            continue
        naive = find_row(rows, "search", r["clients"], "naive")
        if naive and naive["requests"] and r["requests"]:
            out.append({"clients": r["clients"],
                        "p50": round(naive["p50_ms"] / r["p50_ms"], 1),
                        "throughput": round(r["per_s"] / naive["per_s"], 1)})
    return out


def relative_to_search(rows: list[dict], endpoint: str) -> list[dict]:
    """`endpoint`'s req/s and p50 as multiples of search's, at each concurrency with both."""
    out = []
    for r in rows:
        search = find_row(rows, "search", r["clients"])
        if (r["server"], r["endpoint"]) == ("ours", endpoint) and search and search["requests"] \
                and r["requests"]:
            out.append({"clients": r["clients"], "per_s": round(r["per_s"] / search["per_s"], 2),
                        "p50": round(r["p50_ms"] / search["p50_ms"], 2)})
    return out


def targets(results: dict) -> dict:
    rows = results["rows"]
    searches = [r for r in rows if (r["server"], r["endpoint"]) == ("ours", "search")]
    single = find_row(rows, "search", 1)
    busiest = max(searches, key=lambda r: r["clients"]) if searches else None
    busy = find_row(rows, "search", TARGETS["busy_clients"])
    first = next((s for s in results["speedups"] if s["clients"] == 1), None)
    ratio = TARGETS["endpoint_ratio"]
    out = {}
    if single:
        out["single client p50 <= 10 ms"] = single["p50_ms"] <= TARGETS["p50_ms"]
        out["single client p99 <= 30 ms"] = single["p99_ms"] <= TARGETS["p99_ms"]
    if first:
        out["single client >= 20x the naive baseline (p50)"] = first["p50"] >= TARGETS["speedup"]
    if busiest:
        out[f"{busiest['clients']} clients for {busiest['seconds']:g} s: no errors, no 5xx"] = \
            clean(busiest)
    if busy:
        out[f"{TARGETS['busy_clients']} clients search >= {TARGETS['busy_per_s']:,.0f} req/s, "
            f"0 errors, p99 <= {TARGETS['p99_ms']:g} ms"] = (
            busy["per_s"] >= TARGETS["busy_per_s"] and clean(busy)
            and busy["p99_ms"] <= TARGETS["p99_ms"])
    if single:
        out[f"1 client search p50 <= {TARGETS['single_p50_ms_goal']:.1f} ms"] = \
            single["p50_ms"] <= TARGETS["single_p50_ms_goal"]
    for endpoint in ("identify", "verify"):
        relative = relative_to_search(rows, endpoint)
        if relative:
            out[f"{endpoint} within {ratio:g}x of search (req/s and p50, at each concurrency)"] = \
                all(r["per_s"] >= 1 / ratio and r["p50"] <= ratio for r in relative)
    mixed = [r for r in rows if (r["server"], r["endpoint"]) == ("ours", "mixed")]
    if mixed:
        out["mixed load: 0 errors"] = all(clean(r) for r in mixed)
    return out


def summary(results: dict) -> list[str]:
    lines = [""]
    for s in results["speedups"]:
        lines.append(f"{s['clients']:>2} client(s): ours is {s['p50']:,.1f}x faster at p50 and "
                     f"serves {s['throughput']:,.1f}x the requests per second of the naive baseline")
    for endpoint in ("identify", "verify"):
        for r in relative_to_search(results["rows"], endpoint):
            lines.append(f"{r['clients']:>2} client(s): {endpoint} serves {r['per_s']:.2f}x "
                         f"search's req/s at {r['p50']:.2f}x its p50")
    ceiling = results["ceiling_per_s"]
    if ceiling:
        ours = [r for r in results["rows"] if r["server"] == "ours"]
        for clients in sorted({r["clients"] for r in ours}):
            shares = ", ".join(f"{r['endpoint']} {100 * r['per_s'] / ceiling:.1f}%"
                               for r in ours if r["clients"] == clients)
            lines.append(f"{clients:>2} client(s): service's share of the ceiling "
                         f"({ceiling:,.0f} images/s), req/s: {shares}")
    for name, ok in results["targets"].items():
        lines.append(f"target {name}: {'met' if ok else 'NOT MET'}")
    return lines
